//! The fence of a transaction: the group's metadata is read before the positions it commits are
//! prepared ([`fence_then_prepare`]), so a rebalance in between makes the coordinator refuse the
//! transaction instead of committing a revoked partition's old position.
//!
//! Pure ordering: it calls what it is given and nothing else.

/// What [`fence_then_prepare`] found.
#[derive(Debug, PartialEq)]
pub(super) enum Fenced<M, P> {
    Ready(M, P),
    /// The consumer has not joined its group yet: nothing can be committed.
    NoGroupYet,
    /// The dispatcher is gone (stopping): nothing is prepared any more.
    DispatcherGone,
}

/// Reads the group's metadata (its generation, the transaction's fence) *before* the positions
/// are prepared. A partition revoked after the read is then refused by the group coordinator,
/// whose generation has moved on, instead of having its old position committed; read after,
/// the newer generation would vouch for positions prepared under the older one.
pub(super) async fn fence_then_prepare<M, P, F>(
    read_fence: impl FnOnce() -> Option<M>,
    prepare: impl FnOnce() -> F,
) -> Fenced<M, P>
where
    F: std::future::Future<Output = Option<P>>,
{
    let Some(fence) = read_fence() else {
        return Fenced::NoGroupYet;
    };
    match prepare().await {
        Some(prepared) => Fenced::Ready(fence, prepared),
        None => Fenced::DispatcherGone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 4 of the pipeline-core issue: the generation that fences a transaction is the one
    /// read before its positions were prepared, so a rebalance that completes while they are
    /// prepared leaves the transaction with the older generation, which the coordinator refuses.
    #[tokio::test]
    async fn the_fence_is_read_before_the_positions_are_prepared() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let generation = AtomicU64::new(1);
        let fenced = fence_then_prepare(
            || Some(generation.load(Ordering::SeqCst)),
            || async {
                // The positions are prepared under generation 1; a rebalance then completes.
                let prepared_under = generation.load(Ordering::SeqCst);
                generation.store(2, Ordering::SeqCst);
                Some(prepared_under)
            },
        )
        .await;
        assert_eq!(fenced, Fenced::Ready(1, 1));

        let not_joined = fence_then_prepare(|| None::<u64>, || async { Some(()) }).await;
        assert_eq!(not_joined, Fenced::NoGroupYet);
        let stopping = fence_then_prepare(|| Some(1), || async { None::<()> }).await;
        assert_eq!(stopping, Fenced::DispatcherGone);
    }
}
