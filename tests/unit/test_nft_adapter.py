"""The nft adapter: libnftables in process and the nft binary give the same answers.

Only documents nft refuses before talking to the kernel are run here (no privileges, no
namespace); the system tests run real transactions."""

from __future__ import annotations

import pytest

from agent.adapters.nft import Nftables, NftCli, NftLib, default_runner
from agent.network.ports import NetworkError

BAD_ELEMENT = [{"add": {"element": {"family": "inet", "table": "t", "name": "s", "elem": 5}}}]


@pytest.mark.parametrize("runner", [NftLib, NftCli], ids=["libnftables", "cli"])
def test_a_refused_document_raises_with_nfts_error_text(runner: type[NftLib | NftCli]) -> None:
    with pytest.raises(NetworkError, match=r"nft transaction failed: .*Error"):
        Nftables(runner()).apply([{"frobnicate": {"table": {"name": "t"}}}, *BAD_ELEMENT])


def test_both_runners_refuse_alike() -> None:
    texts = []
    for runner in (NftLib(), NftCli()):
        with pytest.raises(NetworkError) as caught:
            Nftables(runner).apply([{"frobnicate": {}}])
        texts.append(str(caught.value))
    assert texts[0] == texts[1]


def test_nothing_to_apply_runs_nothing() -> None:
    Nftables(NftCli("/nonexistent/nft")).apply([])  # no binary needed for no commands


def test_a_missing_binary_is_a_network_error_naming_it() -> None:
    with pytest.raises(NetworkError, match="running /nonexistent/nft"):
        Nftables(NftCli("/nonexistent/nft")).apply([{"add": {"table": {"name": "t"}}}])


def test_without_libnftables_the_binary_is_used() -> None:
    assert isinstance(default_runner("libnftables-missing.so.0"), NftCli)
    assert isinstance(default_runner(), NftLib)  # libnftables1 is in hack/install-deps.sh
