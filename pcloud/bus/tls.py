"""TLS for ``amqps://`` URLs: a client SSLDomain built from pcloud.config's TLS options.

By default the broker's certificate must chain to ``ca`` (or the system store) and match the
host name in the URL, so use a DNS name the certificate carries, not an IP address.
``verify=false`` only encrypts (for tests with throw-away certificates).
"""

from __future__ import annotations

from proton import SSLDomain

from pcloud.config import TLSOptions, tls_options


def client_domain(options: TLSOptions | None = None) -> SSLDomain:
    """The SSLDomain for a client connection."""
    opts = options or tls_options()
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    if opts.ca:
        domain.set_trusted_ca_db(opts.ca)
    if opts.verify:
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME, opts.ca)
    else:
        domain.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
    if opts.cert and opts.key:
        domain.set_credentials(opts.cert, opts.key, None)
    return domain
