//! A minimal HTTP/1.1 server side for the simulator: parse a request head, write a response
//! head. Enough for GET on loopback; deliberately no framework, so that the simulator can
//! misbehave at the byte level.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads one request head from `stream`, keeping any bytes after it in `buf`. `None` when the
/// peer closed or sent something that is not HTTP.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some((req, used)) = parse_request(buf) {
            buf.drain(..used);
            return Some(req);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A parsed request: method, path, query pairs, headers we care about.
pub struct Request {
    pub method: String,
    pub path: String,
    /// The request target's length in bytes (path and query).
    pub target_len: usize,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    /// The target was in absolute form (`GET http://host/path`), as a client sends it to a
    /// forward proxy: the simulator then stands in for the proxy and for Truto behind it.
    pub absolute_form: bool,
    /// The `Proxy-Authorization` header, sent with such a request to a proxy with credentials.
    pub proxy_authorization: Option<String>,
}

pub fn parse_request(buf: &[u8]) -> Option<(Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(used) = req.parse(buf).ok()? else {
        return None;
    };
    let target = req.path?.to_string();
    // A server must accept the absolute form too (RFC 9112, 3.2.2).
    let absolute_form = target.starts_with("http://") || target.starts_with("https://");
    let url = if absolute_form {
        reqwest::Url::parse(&target).ok()?
    } else {
        reqwest::Url::parse(&format!("http://sim{target}")).ok()?
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let proxy_authorization = header("proxy-authorization");
    Some((
        Request {
            method: req.method?.to_string(),
            path: url.path().to_string(),
            target_len: target.len(),
            query: url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            authorization,
            absolute_form,
            proxy_authorization,
        },
        used,
    ))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        414 => "URI Too Long",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub fn response_head(status: u16, headers: &[(String, String)], len: usize) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: {len}\r\n",
        reason(status)
    );
    if !headers.iter().any(|(k, _)| k == "content-type") {
        h.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}
