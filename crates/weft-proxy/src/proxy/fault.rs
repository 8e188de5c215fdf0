//! Fault injection (VirtualService `fault`): a share of a route's requests waits before it
//! is forwarded, and a share is answered with the abort's error instead (flag `FI`).

use crate::error::ProxyError;
use crate::model::Fault;

/// Applies a route's fault: maybe waits, maybe aborts the request.
pub async fn inject(fault: Option<&Fault>) -> Result<(), ProxyError> {
    let Some(fault) = fault else { return Ok(()) };
    let hit = |per_million: u32| fastrand::u32(0..1_000_000) < per_million;
    if let Some((delay, share)) = fault.delay
        && hit(share)
    {
        tokio::time::sleep(delay).await;
    }
    match fault.abort {
        Some((abort, share)) if hit(share) => Err(ProxyError::Fault(abort)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Abort;

    #[tokio::test(start_paused = true)]
    async fn every_request_waits_and_aborts_at_a_hundred_percent() {
        let fault = Fault {
            delay: Some((Duration::from_secs(3), 1_000_000)),
            abort: Some((Abort::Http(hyper::StatusCode::IM_A_TEAPOT), 1_000_000)),
        };
        let started = tokio::time::Instant::now();
        let aborted = inject(Some(&fault)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(matches!(aborted, Err(ProxyError::Fault(Abort::Http(status))) if status == 418));
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_is_touched_at_zero_percent() {
        let fault = Fault {
            delay: Some((Duration::from_secs(3), 0)),
            abort: Some((Abort::Grpc(14), 0)),
        };
        let started = tokio::time::Instant::now();
        for _ in 0..100 {
            assert!(inject(Some(&fault)).await.is_ok());
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
