//! The fake applications behind the server sidecars, each on an ephemeral port of its own
//! (the function returns it). Each answers so that a test sees who answered and what
//! arrived: [`echo_app`] (with failing versions), [`sink_app`] (a body of any size),
//! [`websocket_app`], [`gate_app`] (holds a request until released, reports its arrival),
//! [`http_or_echo_app`] (HTTP or opaque bytes on one port) and [`https_server`] (a server
//! outside the mesh).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clients::read_head;

/// An application that answers every request with its version and the request's own head,
/// so a test sees who answered and what arrived. Version `bad` answers every request with
/// 503, and `flaky` every other one (counted in [`FLAKY_SEEN`]).
pub fn echo_app(version: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_echo(stream, version));
        }
    });
    port
}

/// Requests the `flaky` application has seen; it fails every other one with 503.
pub static FLAKY_SEEN: AtomicUsize = AtomicUsize::new(0);

fn serve_echo(mut stream: TcpStream, version: &str) {
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    if version == "bad"
        || (version == "flaky" && FLAKY_SEEN.fetch_add(1, Ordering::SeqCst) % 2 == 0)
    {
        let _ = stream.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let served_by = format!("served-by: {version}\r\n");
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{served_by}",
        served_by.len() + head.len()
    )
    .into_bytes();
    response.extend_from_slice(&head);
    let _ = stream.set_nodelay(true);
    let _ = stream.write_all(&response);
}

/// An application that reads a request body of any size and answers with its length.
pub fn sink_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let received =
                    std::io::copy(&mut (&stream).take(length), &mut std::io::sink()).unwrap_or(0);
                let body = format!("received: {received}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// An application that switches to WebSocket on request (`101`), then echoes every byte.
pub fn websocket_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                let _ = std::io::copy(&mut &stream, &mut &stream);
            });
        }
    });
    port
}

/// An application that holds each request until told to answer; it reports each arrival.
pub fn gate_app(arrived: Sender<()>, release: Arc<Mutex<Receiver<()>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let (arrived, release) = (arrived.clone(), release.clone());
            std::thread::spawn(move || {
                let _ = read_head(&mut stream);
                let _ = arrived.send(());
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfinished\n",
                );
            });
        }
    });
    port
}

/// A child process, killed when dropped (a failed assertion included).
pub struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTPS server outside the mesh (Python's `ssl`), with the `server` certificate of
/// [`crate::common::pki`]; it requires a client certificate of the `client` CA when
/// `mutual`. Answers `secure` to every GET.
pub fn https_server(dir: &Path, mutual: bool) -> (Killed, u16) {
    let script = r#"
import http.server, ssl, sys
d, mutual = sys.argv[1], sys.argv[2] == "1"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"secure\n")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(d + "/server.pem", d + "/server-key.pem")
if mutual:
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(d + "/client-ca.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(if mutual { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    (Killed(child), port)
}

/// An application that speaks HTTP or not, as its callers do: to a request it answers `200`
/// with the `x-forwarded-client-cert` it received; any other bytes it echoes after `echo:`.
pub fn http_or_echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&stream);
                let Ok(first) = std::io::BufRead::fill_buf(&mut reader) else {
                    return;
                };
                if first.starts_with(b"GET ") {
                    let Some(head) = read_head(&mut reader) else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let xfcc = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
                        .unwrap_or("none")
                        .to_string();
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xfcc}",
                        xfcc.len()
                    );
                } else {
                    let _ = (&stream).write_all(b"echo:");
                    let _ = std::io::copy(&mut reader, &mut &stream);
                }
            });
        }
    });
    port
}
