//! A mock producer application: TCP echo servers on loopback, used by
//! `appctrl mock` and by tests as ProdApp stand-ins.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// Echo servers; dropping this stops them.
pub struct EchoServers {
    /// Their addresses.
    pub addrs: Vec<SocketAddr>,
    _tasks: JoinSet<()>,
}

/// Starts `n` echo servers on `ip` (port 0 each).
pub async fn start_echo_servers(n: usize, ip: IpAddr) -> std::io::Result<EchoServers> {
    let mut addrs = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        addrs.push(l.local_addr()?);
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                conns.spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                if s.write_all(&buf[..k]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
    }
    Ok(EchoServers {
        addrs,
        _tasks: tasks,
    })
}
