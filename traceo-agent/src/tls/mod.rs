//! TLS plaintext: finding and probing OpenSSL (`libraries`, `probes`, where in it: `callee`) and tying the
//! plaintext the probes report to its connection (`binder`).

pub mod binder;
pub mod callee;
pub mod libraries;
pub mod probes;

pub use binder::{TlsBinder, TlsStats};
pub use probes::{TlsProbes, Visibility};
