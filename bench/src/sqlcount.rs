//! Counts SQL round trips: sqlx emits one `sqlx::query` tracing event per
//! statement it runs. The filter is dynamic, so outside [`count`] sqlx does not
//! even format its log line.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

struct StatementCounter;

impl<S: tracing::Subscriber> Layer<S> for StatementCounter {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Installs the counting subscriber (the bench logs nothing else through tracing).
pub fn install() {
    let filter = dynamic_filter_fn(|meta, _| {
        COUNTING.load(Ordering::Relaxed) && meta.target() == "sqlx::query"
    });
    let _ = tracing_subscriber::registry()
        .with(StatementCounter.with_filter(filter))
        .try_init();
}

/// Runs `future` and returns how many SQL statements it issued. Not reentrant:
/// nothing else may run SQL in this process meanwhile.
pub async fn count<F: Future>(future: F) -> (F::Output, u64) {
    STATEMENTS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let output = future.await;
    COUNTING.store(false, Ordering::Relaxed);
    (output, STATEMENTS.load(Ordering::Relaxed))
}
