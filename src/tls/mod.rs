//! TLS on every port, and who a certificate says its holder is: the identities Keepsake's
//! certificates carry (`identity`), making them (`certs`), serving a port (`server`) and
//! dialing one (`client`).

pub mod certs;
pub mod client;
pub mod identity;
pub mod server;
