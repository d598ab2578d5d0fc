"""VM networking: address plans, taps, nftables NAT and DHCP for masquerade and bridge NICs."""
