//! Plain HTTP for the tests: one bodiless HTTP/1.1 request (the S3 server's bucket set-up), and
//! the value of one metric in a node's `/metrics` (over TLS, `tls::https_request`).

use std::time::Duration;

use super::cluster::Cluster;

/// One bodiless HTTP/1.1 request to `addr`; returns the status code and the whole response.
pub fn http_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    request_over(stream, addr, method, path)
}

/// One bodiless HTTP/1.1 request to `addr` over `stream` (plain TCP, or TLS around it).
pub fn request_over(
    mut stream: impl std::io::Read + std::io::Write,
    addr: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Ok(_) => {}
        // A TLS server that closes without close_notify still sent the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    Ok((code, response))
}

/// The value of one metric in a node's `/metrics` (panics if it is missing).
pub fn metric(cluster: &Cluster, id: u64, name: &str) -> f64 {
    let (code, text) = super::tls::https_request(&cluster.http_addr(id), "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} is not in /metrics: {text}"))
}
