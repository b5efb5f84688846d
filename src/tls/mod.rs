//! TLS on every port, and who a certificate says its holder is: the identities Keepsake's
//! certificates carry (`identity`), making them (`certs`), a node's checked and watched files
//! (`material`), serving a port (`server`) and dialing one (`client`).

pub mod certs;
pub mod client;
pub mod identity;
pub mod material;
pub mod server;
