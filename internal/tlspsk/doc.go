// Package tlspsk is a small TLS 1.3 server for external pre-shared keys
// (RFC 8446 with a PSK provisioned out of band, as GnuTLS's psktool,
// nbdkit --tls-psk and QEMU's tls-creds-psk use them). Go's crypto/tls has
// no external-PSK support; this package fills that gap for Ferry's NBD
// server and nothing more.
//
// What it supports:
//
//   - TLS 1.3 only (supported_versions must offer 0x0304), server side only.
//   - PSK with (EC)DHE key exchange only (psk_dhe_ke, RFC 8446 §4.2.9), so
//     every session has forward secrecy. A client offering only psk_ke is
//     refused with a handshake_failure alert.
//   - Key shares x25519 and secp256r1 (§4.2.8). A client whose first
//     ClientHello has a share for neither but supports one of them gets one
//     HelloRetryRequest (§4.1.4, no cookie) naming it; its second
//     ClientHello must carry exactly that share, the same session ID and
//     cipher suite, no early_data, and a binder over the new transcript. A
//     client supporting neither group is refused with handshake_failure.
//   - Cipher suites TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256,
//     the server's order. External PSKs are SHA-256 PSKs (GnuTLS's default),
//     so the SHA-384 suite is not offered.
//   - The first offered identity the key lookup knows is selected; its
//     binder (§4.2.11.2, label "ext binder") is verified in constant time
//     before anything else is sent. An unknown identity gets
//     unknown_psk_identity, a wrong binder decrypt_error.
//   - Records (§5): fragmented handshake messages and several messages per
//     record, plaintext limit 2^14 (record_overflow beyond), middlebox
//     change_cipher_spec records ignored during the handshake, padding,
//     alerts, close_notify. Post-handshake KeyUpdate (§4.6.3) from the
//     client updates the read keys and is answered when requested; the
//     server updates its own write keys every 2^24 records (the AES-GCM
//     limit of §5.5).
//
// What it refuses or leaves out: certificates (a ClientHello without
// pre_shared_key is refused with handshake_failure; callers that also
// serve certificates route such hellos to crypto/tls, see
// PeekClientHello), TLS 1.2 and older, 0-RTT early data (never accepted;
// records the client sends as early data are skipped, up to 64 KiB,
// §4.2.10), session tickets (none are sent, so no resumption), client
// authentication beyond the PSK, and exporters.
//
// Errors never panic: every decoder is bounds-checked and fuzzed
// (FuzzClientHello, FuzzServer, FuzzRecords).
package tlspsk
