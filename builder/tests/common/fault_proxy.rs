//! TEST FIXTURE: a TCP proxy in front of a registry that injects faults on
//! a fixed schedule of connections: some answer `503 Service Unavailable`
//! at once, some are cut after a number of bytes of the answer (a
//! connection reset mid-blob), some are slowed down, the rest pass
//! through. It counts what it
//! did and whether a client asked for a byte range (a resumed download).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What happens to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded untouched.
    Pass,
    /// `503` with `Connection: close`, nothing forwarded.
    Unavailable,
    /// Forwarded; once its answers pass this many bytes the connection
    /// is closed, while the proxy's budget of cuts lasts (so the cut
    /// lands in whatever large download a connection carries).
    CutAfter(usize),
    /// Forwarded, each 16 KiB of the answers after this many milliseconds
    /// (a slow network, for progress that must show while it lasts).
    Slow(u64),
}

/// Counters of a running proxy.
#[derive(Default)]
pub struct Counts {
    /// 503s sent.
    pub unavailable: AtomicUsize,
    /// Connections cut.
    pub cut: AtomicUsize,
    /// Whether a request carried a `Range` header.
    pub saw_range: AtomicBool,
    /// Cuts still allowed.
    pub cuts_left: AtomicUsize,
}

/// A running proxy.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// What it did.
    pub counts: Arc<Counts>,
}

impl FaultProxy {
    /// Proxies to `target`; connection `n` (from 0) gets
    /// `schedule[n % schedule.len()]`; at most `cuts` connections are cut.
    pub fn start(target: &str, schedule: Vec<Fault>, cuts: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counts = Arc::new(Counts::default());
        counts.cuts_left.store(cuts, Ordering::SeqCst);
        let c = counts.clone();
        let target = target.to_string();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let fault = schedule[n % schedule.len()];
                let target = target.clone();
                let c = c.clone();
                std::thread::spawn(move || serve(client, &target, fault, &c));
            }
        });
        FaultProxy { addr, counts }
    }
}

fn serve(mut client: TcpStream, target: &str, fault: Fault, counts: &Counts) {
    if fault == Fault::Unavailable {
        // Read the request head, then refuse.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && client.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        counts.unavailable.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(upstream) = TcpStream::connect(target) else {
        return;
    };
    let mut up_w = upstream.try_clone().unwrap();
    let mut client_r = client.try_clone().unwrap();
    let range_seen = std::thread::scope(|s| {
        let requests = s.spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            let mut saw = false;
            loop {
                let n = match client_r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                saw |= text.contains("\r\nrange: bytes=");
                if up_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = up_w.shutdown(Shutdown::Write);
            saw
        });
        let mut up_r = upstream;
        let mut buf = [0u8; 16 * 1024];
        let mut sent = 0usize;
        loop {
            let n = match up_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match fault {
                Fault::CutAfter(limit)
                    if sent + n >= limit
                        && counts
                            .cuts_left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                            .is_ok() =>
                {
                    let _ = client.write_all(&buf[..limit - sent]);
                    counts.cut.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Fault::Slow(ms) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    n
                }
                _ => n,
            };
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = up_r.shutdown(Shutdown::Both);
        requests.join().unwrap_or(false)
    });
    if range_seen {
        counts.saw_range.store(true, Ordering::SeqCst);
    }
}
