//! A minimal HTTP/1.1 client on tokio for the load generator: one keep-alive
//! connection, one request at a time, answers with a `Content-Length` or
//! chunked body. It only needs to read what abide, the async variant and
//! Nchan send, and to be cheap, so that the client costs every server alike.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `Abide-Missed: true` (abide and the async variant mark gaps with it).
    pub missed: bool,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    pub async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await
    }

    pub async fn request(&mut self, request: &[u8]) -> io::Result<Resp> {
        self.send(request).await?;
        self.read_response().await
    }

    /// Like `request`, but gives up after `limit`.
    pub async fn request_within(&mut self, request: &[u8], limit: Duration) -> io::Result<Resp> {
        match tokio::time::timeout(limit, self.request(request)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub async fn read_response(&mut self) -> io::Result<Resp> {
        // Head.
        let (head_len, mut resp, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut resp = Resp {
                        status: parsed.code.unwrap_or(0),
                        ..Resp::default()
                    };
                    let mut length = None;
                    let mut chunked = false;
                    for h in parsed.headers.iter() {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        let name = h.name;
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.parse::<usize>().ok();
                        } else if name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = value.to_ascii_lowercase().contains("chunked");
                        } else if name.eq_ignore_ascii_case("etag") {
                            resp.etag = Some(value);
                        } else if name.eq_ignore_ascii_case("last-modified") {
                            resp.last_modified = Some(value);
                        } else if name.eq_ignore_ascii_case("abide-missed") {
                            resp.missed = value == "true";
                        }
                    }
                    break (len, resp, length, chunked);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad answer: {e}"),
                    ));
                }
            }
        };
        self.buf.drain(..head_len);
        let no_body = resp.status == 204 || resp.status == 304 || (100..200).contains(&resp.status);
        if no_body {
            return Ok(resp);
        }
        if chunked {
            resp.body = self.read_chunked().await?;
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill().await?;
            }
            resp.body = self.buf.drain(..length).collect();
        }
        Ok(resp)
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        self.buf.drain(..p + 2);
                        if p == 0 {
                            return Ok(body);
                        }
                    } else {
                        self.fill().await?;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every unsigned integer that follows `key` in `body` (e.g. `"bseq":`), in order.
pub fn numbers_after(body: &[u8], key: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&body[i..], key) {
        let mut j = i + p + key.len();
        while j < body.len() && body[j] == b' ' {
            j += 1;
        }
        let mut n: u64 = 0;
        let mut digits = 0;
        while j < body.len() && body[j].is_ascii_digit() {
            n = n * 10 + u64::from(body[j] - b'0');
            j += 1;
            digits += 1;
        }
        if digits > 0 {
            out.push(n);
        }
        i = j.max(i + p + 1);
    }
    out
}
