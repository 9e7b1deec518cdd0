//! MetaBridge's network-mode tests (`tests/`): TLS services in real
//! processes (`mb-tls-service`, this crate's one program) and clients that
//! reach them over real TCP sockets. Nothing to link against: the crate
//! exists so that the root package, whose demo must build no
//! cryptography, needs no TLS for its own tests.
