//! A minimal HTTP/1.1 keep-alive client for the API benchmark: one connection, one request at
//! a time, bodies read in full (Content-Length or chunked) and counted. Small on purpose, so
//! the client costs little of the CPU the server is measured on.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
    line: String,
    body: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub async fn connect(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
            host: addr.to_string(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends one request and reads the whole response; returns the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
        bearer: Option<&str>,
    ) -> std::io::Result<(u16, &[u8])> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(t) = bearer {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = json {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let w = self.stream.get_mut();
        w.write_all(head.as_bytes()).await?;
        if let Some(b) = json {
            w.write_all(b).await?;
        }

        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line `{}`", self.line.trim())))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        self.body.clear();
        if chunked {
            loop {
                self.line.clear();
                self.stream.read_line(&mut self.line).await?;
                let n = usize::from_str_radix(self.line.trim(), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let start = self.body.len();
                self.body.resize(start + n + 2, 0);
                self.stream.read_exact(&mut self.body[start..]).await?;
                self.body.truncate(start + n);
                if n == 0 {
                    break;
                }
            }
        } else {
            let n = length.ok_or_else(|| bad("response without Content-Length"))?;
            self.body.resize(n, 0);
            self.stream.read_exact(&mut self.body).await?;
        }
        Ok((status, &self.body))
    }
}
