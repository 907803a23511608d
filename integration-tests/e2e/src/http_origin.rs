//! Small HTTP/1.1 servers on 127.0.0.1, one connection per request: [`HttpOrigin`] hands out
//! byte blobs with strong ETags, the shape of an archive origin (`If-None-Match` answered with
//! 304); [`post_sink`] records the bodies POSTed to it (an app's notification endpoint).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

/// Starts an endpoint answering every request with 204 and recording its body; returns its port
/// and the bodies received so far.
pub fn post_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (_, headers) = read_head(&mut reader);
            let length = header(&headers, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, bodies)
}

/// Reads a request's first line and headers: (path, [(name, value)]).
fn read_head(reader: &mut impl BufRead) -> (String, Vec<(String, String)>) {
    let mut first = String::new();
    let _ = reader.read_line(&mut first);
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    (path, headers)
}

/// The value of header `name` (case-insensitive).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Served files: path → (body, ETag).
type Files = Arc<Mutex<HashMap<String, (Vec<u8>, String)>>>;

/// Serves byte blobs with strong ETags (a new ETag on every [`HttpOrigin::put`]) from a
/// background thread for as long as the test runs.
#[derive(Clone, Debug)]
pub struct HttpOrigin {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    files: Files,
}

impl HttpOrigin {
    /// Starts serving on a free port.
    pub fn start() -> HttpOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let origin = HttpOrigin {
            port,
            files: Arc::default(),
        };
        let files = origin.files.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let files = files.clone();
                std::thread::spawn(move || answer(stream, &files));
            }
        });
        origin
    }

    /// Serves `body` at `path` under a new ETag; returns the version name (the bare ETag).
    pub fn put(&self, path: &str, body: Vec<u8>) -> String {
        let digest = fnv1a(&body);
        let etag = format!("\"{digest:016x}\"");
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (body, etag));
        format!("{digest:016x}")
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Answers one request on `stream`.
fn answer(mut stream: TcpStream, files: &Files) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (path, headers) = read_head(&mut reader);
    let if_none_match = header(&headers, "if-none-match");
    let entry = files.lock().unwrap().get(&path).cloned();
    let head = match &entry {
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
        Some((_, etag)) if if_none_match == Some(etag.as_str()) => {
            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
        }
        Some((body, etag)) => format!(
            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    let _ = stream.write_all(head.as_bytes());
    if let Some((body, etag)) = entry
        && if_none_match != Some(etag.as_str())
    {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
}

/// FNV-1a: distinct bodies get distinct ETags.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf29ce484222325u64;
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}
