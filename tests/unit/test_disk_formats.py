"""Pure parts of container disks: references, manifests, digests, auth, layers."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from agent.disks.auth import CredentialsError, load_credentials, parse_challenge, token_params
from agent.disks.layers import DiskSearch, LayerError
from agent.disks.manifest import (
    DigestMismatch,
    DigestWriter,
    Index,
    Manifest,
    ManifestError,
    digest_of,
    parse_manifest,
    select_platform,
)
from agent.errors import InvalidSpec
from agent.imageref import BadReference, ImageRef, parse_reference
from agent.spec import parse_vm
from tests.unit.disk_fakes import layer

# -- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:5000/containerdisks/fedora:40",
         ImageRef("192.0.2.1:5000", "containerdisks/fedora", "40")),
        ("quay.io/containerdisks/fedora", ImageRef("quay.io", "containerdisks/fedora", "latest")),
        ("fedora", ImageRef("docker.io", "library/fedora", "latest")),
        ("kubevirt/cirros-container-disk-demo:v1.0",
         ImageRef("docker.io", "kubevirt/cirros-container-disk-demo", "v1.0")),
        ("localhost/a/b", ImageRef("localhost", "a/b", "latest")),
        ("reg.example/a@sha256:" + "a" * 64,
         ImageRef("reg.example", "a", "", "sha256:" + "a" * 64)),
        ("reg.example/a:1@sha256:" + "b" * 64,
         ImageRef("reg.example", "a", "1", "sha256:" + "b" * 64)),
        ("[fd00::1]:5000/disk", ImageRef("[fd00::1]:5000", "disk", "latest")),
    ],
    ids=["ip-port-tag", "no-tag", "hub-library", "hub-user", "localhost", "digest",
         "tag-and-digest", "ipv6"],
)  # fmt: skip
def test_references_parse(text: str, expected: ImageRef) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " fedora", "reg:5000/UPPER:1", "reg:5000/a:-bad", "reg.example/a@sha256:short",
     "reg.example/", "reg.example/a/../b", "reg:99999999/a", "a b"],
)  # fmt: skip
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(BadReference):
        parse_reference(text)


def test_reference_api_host_and_text() -> None:
    ref = parse_reference("fedora:40")
    assert ref.api_host == "registry-1.docker.io" and str(ref) == "docker.io/library/fedora:40"
    assert parse_reference("r:5000/x").api_host == "r:5000"


# -- manifests and digests ----------------------------------------------------------------

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _manifest(media: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1,
                   "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2,
                    "size": 20}],
    }).encode()  # fmt: skip


@pytest.mark.parametrize(
    "media",
    ["application/vnd.oci.image.manifest.v1+json",
     "application/vnd.docker.distribution.manifest.v2+json"],
    ids=["oci", "docker-v2"],
)  # fmt: skip
def test_image_manifests_parse(media: str) -> None:
    parsed = parse_manifest(_manifest(media))
    assert isinstance(parsed, Manifest) and parsed.media_type == media
    assert parsed.config.digest == D1 and [x.digest for x in parsed.layers] == [D2]
    assert parsed.total_size == 20


def test_media_type_from_content_type_when_the_body_has_none() -> None:
    body = json.loads(_manifest())
    del body["mediaType"]
    docker = "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
    assert parse_manifest(json.dumps(body).encode(), docker).media_type == docker.split(";")[0]


def test_index_selects_linux_amd64() -> None:
    body = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "m", "digest": D1, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "m", "digest": D2, "size": 2,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }).encode()  # fmt: skip
    index = parse_manifest(body)
    assert isinstance(index, Index)
    assert select_platform(index).digest == D2
    with pytest.raises(ManifestError, match="no linux/s390x manifest.*linux/arm64/v8"):
        select_platform(index, architecture="s390x")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schemaVersion 1"),
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), "not an OCI"),
        (json.dumps({"schemaVersion": 2, "config": {"digest": D1, "size": 1},
                     "layers": []}).encode(), "no layers"),
        (json.dumps({"schemaVersion": 2, "config": {"digest": "md5:x", "size": 1},
                     "layers": [{"digest": D2, "size": 1}]}).encode(), "no valid digest"),
        (json.dumps({"schemaVersion": 2, "config": {"digest": D1, "size": -1},
                     "layers": [{"digest": D2, "size": 1}]}).encode(), "no valid size"),
    ],
    ids=["not-json", "schema1", "media-type", "no-layers", "bad-digest", "bad-size"],
)  # fmt: skip
def test_bad_manifests_are_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(body)


def test_digest_writer_verifies_while_streaming() -> None:
    data = b"hello containerdisk"
    sink: list[bytes] = []
    writer = DigestWriter(digest_of(data), len(data), sink.append)
    writer.write(data[:5])
    writer.write(data[5:])
    writer.verify()
    assert b"".join(sink) == data
    sha512 = "sha512:" + hashlib.sha512(data).hexdigest()
    DigestWriter(sha512, len(data)).write(data)


def test_digest_writer_catches_tampering_oversize_and_short_reads() -> None:
    data = b"hello containerdisk"
    tampered = DigestWriter(digest_of(data), len(data))
    tampered.write(b"jello containerdisk")
    with pytest.raises(DigestMismatch, match="content has digest sha256:"):
        tampered.verify()
    with pytest.raises(DigestMismatch, match="more than the expected"):
        DigestWriter(digest_of(data), 3).write(data)
    short = DigestWriter(digest_of(data), len(data) + 1)
    short.write(data)
    with pytest.raises(DigestMismatch, match="got 19 bytes"):
        short.verify()


# -- auth ---------------------------------------------------------------------------------


def test_bearer_challenge_parses_quoted_commas() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    realm, query = token_params(challenge, "a/b")
    assert realm == "https://auth.example/token"
    assert query == {"scope": "repository:a/b:pull,push", "service": "registry.example"}
    default = token_params(parse_challenge('Bearer realm="http://r/t"'), "x/y")
    assert default == ("http://r/t", {"scope": "repository:x/y:pull"})
    with pytest.raises(ValueError, match="realm"):
        token_params(parse_challenge('Bearer realm="file:///etc/passwd"'), "x")
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"


def test_credentials_from_docker_config() -> None:
    auth = base64.b64encode(b"alice:s3cr:et").decode()
    creds = load_credentials(json.dumps({"auths": {
        "reg.example:5000": {"auth": auth},
        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
        "token-only.example": {"identitytoken": "x"},
    }}))  # fmt: skip
    assert creds.lookup("reg.example:5000") == ("alice", "s3cr:et")
    assert creds.lookup("docker.io") == ("bob", "pw")
    assert creds.lookup("token-only.example") is None and creds.lookup("other") is None


def test_token_realms_that_may_get_credentials() -> None:
    auth = base64.b64encode(b"alice:pw").decode()
    creds = load_credentials(json.dumps({"auths": {
        "reg.example:5000": {"auth": auth, "realms": ["auth.example", "sso.example:8443"]},
        "docker.io": {"auth": auth},
    }}))  # fmt: skip
    assert creds.may_receive("reg.example:5000", "reg.example", "reg.example")
    assert creds.may_receive("reg.example:5000", "reg.example", "sso.example:8443")
    assert not creds.may_receive("reg.example:5000", "reg.example", "elsewhere.example")
    assert creds.may_receive("docker.io", "registry-1.docker.io", "auth.docker.io")
    with pytest.raises(CredentialsError, match="realms"):
        load_credentials('{"auths": {"r": {"auth": "' + auth + '", "realms": "x"}}}')


@pytest.mark.parametrize(
    "text",
    ["nope", '{"auths": []}', '{"auths": {"r": {"auth": "!!"}}}',
     '{"auths": {"r": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}'],
)  # fmt: skip
def test_bad_credentials_files_are_refused(text: str) -> None:
    with pytest.raises(CredentialsError):
        load_credentials(text)


# -- layers -------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _search(tmp_path: Path, layers: list[bytes], wanted: str = "") -> bytes:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    search = DiskSearch(str(work), wanted=wanted)
    for number, data in enumerate(layers):
        search.apply_layer(_write(work, f"layer-{number}", data))
    return Path(search.result()).read_bytes()


def test_the_single_file_under_disk_is_taken_from_gzip_or_plain_layers(tmp_path: Path) -> None:
    assert _search(tmp_path, [layer({"disk/disk.qcow2": b"QFI", "etc/x": b"y"})]) == b"QFI"
    plain = layer({"./disk/root.img": b"RAW", "disk/sub/other": b"z"}, gz=False)
    assert _search(tmp_path, [plain]) == b"RAW"


def test_later_layers_replace_and_whiteouts_delete(tmp_path: Path) -> None:
    first = layer({"disk/a.img": b"old", "disk/b.img": b"b"})
    second = layer({"disk/a.img": b"new", "disk/.wh.b.img": b""})
    assert _search(tmp_path, [first, second]) == b"new"
    opaque = layer({"disk/.wh..wh..opq": b"", "disk/c.img": b"c"})
    assert _search(tmp_path, [first, opaque]) == b"c"


def test_a_named_path_picks_one_of_several(tmp_path: Path) -> None:
    both = layer({"disk/a.img": b"A", "disk/b.img": b"B"})
    assert _search(tmp_path, [both], wanted="/disk/b.img") == b"B"
    with pytest.raises(LayerError, match="several files.*containerDisk.path"):
        _search(tmp_path, [both])
    with pytest.raises(LayerError, match="no file /disk/c.img"):
        _search(tmp_path, [both], wanted="disk/c.img")


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"etc/passwd": b"x"}, "no file in /disk/"),
        ({"disk/disk.img": "/etc/shadow"}, "not a regular file"),
        ({"../disk/disk.img": b"x", "disk/../../x": b"y"}, "no file in /disk/"),
    ],
    ids=["not-a-containerdisk", "symlink", "dotdot-names-ignored"],
)
def test_images_without_a_usable_disk_are_refused(
    tmp_path: Path, files: dict[str, bytes | str], problem: str
) -> None:
    with pytest.raises(LayerError, match=problem):
        _search(tmp_path, [layer(files)])


def test_a_layer_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="not a readable tar"):
        _search(tmp_path, [b"\x28\xb5\x2f\xfd zstd, not gzip"])
    with pytest.raises(LayerError, match="must not contain"):
        DiskSearch(str(tmp_path), wanted="disk/../x")


def test_spec_parsing_refuses_a_malformed_container_disk_reference() -> None:
    document = {
        "metadata": {"namespace": "default", "name": "vm"},
        "spec": {"template": {"spec": {
            "domain": {"memory": {"guest": "64Mi"},
                       "devices": {"disks": [{"name": "root", "disk": {}}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "reg:5000/Bad:tag"}}],
        }}},
    }  # fmt: skip
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(document)
    assert caught.value.field == "spec.template.spec.volumes[0].containerDisk.image"
