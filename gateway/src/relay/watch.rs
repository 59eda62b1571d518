//! What the relay's data paths share: running both directions until both
//! end or either socket reports an error (a reset), as a [`RelayError`]
//! naming the side (the socket helpers themselves are `crate::sockets`).
use std::future::Future;
use std::io;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpStream;

use super::{ConnCounters, RelayError, Side};
use crate::sockets::{self, Reported};

/// Runs `direction` client -> server and server -> client at once until both
/// ended, or until either socket reports an error.
pub(super) async fn both_directions<'a, F, Fut>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    counters: &'a ConnCounters,
    direction: F,
) -> Result<(), RelayError>
where
    F: Fn(&'a TcpStream, &'a TcpStream, &'a AtomicU64) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let up = async {
        direction(client, server, &counters.to_server)
            .await
            .map_err(|source| RelayError::Io {
                side: Side::Server,
                source,
            })
    };
    let down = async {
        direction(server, client, &counters.to_client)
            .await
            .map_err(|source| RelayError::Io {
                side: Side::Client,
                source,
            })
    };
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(client, server) => Err(err),
    }
}

/// Resolves with the first error (RST, timeout) reported on either socket,
/// as the relay's error naming the side.
pub(super) async fn first_error(client: &TcpStream, server: &TcpStream) -> RelayError {
    match sockets::first_error(client, server).await {
        Reported::First(source) => RelayError::Io {
            side: Side::Client,
            source,
        },
        Reported::Second(source) => RelayError::Io {
            side: Side::Server,
            source,
        },
    }
}
