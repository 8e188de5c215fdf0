//! Graceful drain, on SIGTERM or the admin page's `POST /quitquitquit`: the listeners stop
//! accepting, HTTP connections finish the requests in flight and close (HTTP/1.1 after the
//! current response, HTTP/2 with GOAWAY), and the process exits once every connection is
//! done or the drain duration (Istio's `terminationDrainDuration`, 5 s) has passed.
//!
//! [`Drain`] starts it; every listener and connection holds a [`Watch`] (through the
//! inbound or outbound handler it runs), and the drain is over when the last one is dropped.
//! TCP splices and upgraded streams are counted but cannot be asked to finish: they are cut
//! when the drain duration is over.

use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};

/// Starts the drain and tells when it is over.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    finished: Notify,
    duration: Duration,
}

/// What listeners and connections hold: the signal to stop, and (by being held) a count of
/// what is still open.
#[derive(Debug, Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
}

impl Drain {
    /// A drain that waits at most `duration` for connections to finish.
    pub fn new(duration: Duration) -> Self {
        Self {
            signal: watch::Sender::new(false),
            finished: Notify::new(),
            duration,
        }
    }

    /// A watch for a listener or a connection.
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.signal.subscribe(),
        }
    }

    /// Drains: signals every listener and connection, then waits until they are all done
    /// or the drain duration has passed. [`Drain::finished`] returns after this.
    pub async fn drain(&self) {
        if self.signal.send_replace(true) {
            return; // already draining
        }
        tracing::info!(connections = self.signal.receiver_count(), "draining");
        if tokio::time::timeout(self.duration, self.signal.closed())
            .await
            .is_err()
        {
            tracing::info!(
                still_open = self.signal.receiver_count(),
                "drain duration over"
            );
        }
        self.finished.notify_one();
    }

    /// Returns once a drain has finished.
    pub async fn finished(&self) {
        self.finished.notified().await;
    }
}

impl Watch {
    /// Returns once the drain has started (never, if it does not).
    pub async fn signaled(&mut self) {
        if self.signal.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs an HTTP connection; when the drain starts, asks it to finish gracefully.
    pub async fn serve<C: GracefulConnection>(mut self, connection: C) -> C::Output {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            output = connection.as_mut() => return output,
            () = self.signaled() => {}
        }
        connection.as_mut().graceful_shutdown();
        connection.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_what_is_open_and_no_longer() {
        let drain = std::sync::Arc::new(Drain::new(Duration::from_secs(5)));
        let open = drain.watch();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain().await }
        });
        let mut listener = drain.watch();
        listener.signaled().await;
        drop(listener);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "one connection is still open");
        drop(open);
        task.await.expect("the drain ends");
        drain.finished().await;
        assert!(started.elapsed() < Duration::from_secs(5));

        let stuck = Drain::new(Duration::from_millis(100));
        let _held = stuck.watch();
        let started = tokio::time::Instant::now();
        stuck.drain().await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
