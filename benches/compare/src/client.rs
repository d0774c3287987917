//! A minimal HTTP/1.1 client on tokio for the load generator: one keep-alive
//! connection, one request at a time, answers with a `Content-Length` or
//! chunked body; or one stream of Server-Sent Events (`Conn::open_stream`). It only needs to read what abide, the async variant and
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
    pub content_type: Option<String>,
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
        let (mut resp, length, chunked) = self.read_head().await?;
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

    /// Reads an answer's head: the answer without its body, its
    /// `Content-Length` and whether it is chunked.
    async fn read_head(&mut self) -> io::Result<(Resp, Option<usize>, bool)> {
        let (head_len, resp, length, chunked) = loop {
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
                        } else if name.eq_ignore_ascii_case("content-type") {
                            resp.content_type = Some(value);
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
        Ok((resp, length, chunked))
    }

    /// Sends `request` (a `GET` with `Accept: text/event-stream`) and reads
    /// the answer's head: a stream of Server-Sent Events when it is a `200`
    /// of type `text/event-stream`, otherwise an error naming what came.
    pub async fn open_stream(mut self, request: &[u8]) -> io::Result<EventStream> {
        self.send(request).await?;
        let (resp, _length, chunked) = self.read_head().await?;
        let sse = resp
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/event-stream"));
        if resp.status != 200 || !sse {
            return Err(io::Error::other(format!(
                "not a stream: status {}, content type {:?}",
                resp.status, resp.content_type
            )));
        }
        Ok(EventStream {
            conn: self,
            chunked,
            text: Vec::new(),
        })
    }

    /// One chunk of a chunked body (`None` at the last, empty chunk).
    async fn read_one_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
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
            return Ok(None);
        }
        while self.buf.len() < size + 2 {
            self.fill().await?;
        }
        let chunk = self.buf[..size].to_vec();
        self.buf.drain(..size + 2);
        Ok(Some(chunk))
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

/// An open stream of Server-Sent Events (abide's stream, Nchan's EventSource
/// subscriber): its head has been read; `next_message` gives each message.
pub struct EventStream {
    conn: Conn,
    chunked: bool,
    /// Body text received and not yet handed out.
    text: Vec<u8>,
}

/// One Server-Sent Events message: its `event:` field and its `data:` lines
/// (joined by newlines), or neither (a comment, a `retry:`).
#[derive(Debug, Default)]
pub struct SseMessage {
    pub event: Option<String>,
    pub data: Option<Vec<u8>>,
}

impl EventStream {
    /// The next message (the text up to the next blank line), read from the
    /// connection as needed. Fails when the connection ends.
    pub async fn next_message(&mut self) -> io::Result<SseMessage> {
        loop {
            if let Some(p) = find(&self.text, b"\n\n") {
                let block: Vec<u8> = self.text.drain(..p + 2).collect();
                return Ok(parse_message(&block[..p]));
            }
            if self.chunked {
                match self.conn.read_one_chunk().await? {
                    Some(chunk) => self.text.extend_from_slice(&chunk),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the stream ended",
                        ));
                    }
                }
            } else {
                if self.conn.buf.is_empty() {
                    self.conn.fill().await?;
                }
                self.text.append(&mut self.conn.buf);
            }
        }
    }
}

fn parse_message(block: &[u8]) -> SseMessage {
    let mut m = SseMessage::default();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => continue, // a comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => m.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => match &mut m.data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
                None => m.data = Some(value.to_vec()),
            },
            _ => {}
        }
    }
    m
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
