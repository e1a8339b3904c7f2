//! The queues between the request path and the export stage, for spans and log records: a
//! bounded batch processor like the SDK's `BatchSpanProcessor` (one thread, `block_on` for the
//! exporter), but one that counts every item it drops, so `acpd.telemetry.dropped` tells
//! operators what was lost. The SDK's processors only log their first drop and the total at
//! shutdown.

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::drops::{self, Signal, Source, Stage};

#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
}

impl QueueConfig {
    /// Defaults as the SDK's (2048 / 512), overridable by the standard `OTEL_BSP_*` variables.
    pub fn from_env(delay: Duration) -> Self {
        Self::from_env_prefix("OTEL_BSP", delay)
    }

    /// The same for the log queue (`OTEL_BLRP_*`).
    pub fn logs_from_env(delay: Duration) -> Self {
        Self::from_env_prefix("OTEL_BLRP", delay)
    }

    fn from_env_prefix(prefix: &str, delay: Duration) -> Self {
        let num = |k: &str| {
            super::env(&format!("{prefix}_{k}")).and_then(|v| v.trim().parse::<u64>().ok())
        };
        let max_queue = num("MAX_QUEUE_SIZE").map_or(2048, |n| n.max(1) as usize);
        let max_batch = num("MAX_EXPORT_BATCH_SIZE")
            .map_or(512, |n| n.max(1) as usize)
            .min(max_queue);
        let delay = num("SCHEDULE_DELAY").map_or(delay, Duration::from_millis);
        Self {
            max_queue,
            max_batch,
            delay,
        }
    }
}

/// Where a queue's batches go: the export stage of one signal.
pub trait Sink<T>: Send + 'static {
    fn export(&mut self, batch: Vec<T>) -> OTelSdkResult;
    fn shutdown(&mut self) -> OTelSdkResult;
    fn set_resource(&mut self, resource: &Resource);
}

/// A span exporter as a sink.
pub struct Spans<E>(pub E);

impl<E: SpanExporter + 'static> Sink<SpanData> for Spans<E> {
    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        futures::executor::block_on(self.0.export(batch))
    }
    fn shutdown(&mut self) -> OTelSdkResult {
        self.0.shutdown()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource)
    }
}

/// A log exporter as a sink.
pub struct Logs<E>(pub E);

impl<E: LogExporter + 'static> Sink<(SdkLogRecord, InstrumentationScope)> for Logs<E> {
    fn export(&mut self, batch: Vec<(SdkLogRecord, InstrumentationScope)>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|(r, s)| (r, s)).collect();
        futures::executor::block_on(self.0.export(LogBatch::new(&refs)))
    }
    fn shutdown(&mut self) -> OTelSdkResult {
        self.0.shutdown()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource)
    }
}

enum Ctl {
    /// A batch's worth of items is waiting.
    Export,
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
    Resource(Resource),
}

/// Items travel on a channel nobody blocks on, so ending a span or emitting a record wakes no
/// thread; the worker sleeps on the control channel until a batch is full, the delay passes,
/// or it is asked. The channel grows in small blocks as items come and frees them as they
/// leave, and `queued` holds it to `max_queue`: a bounded channel would hold its whole
/// capacity for the process's life (2,048 slots of a span: 0.7 MiB, of a log record: 1.1 MiB).
#[derive(Debug)]
struct Queue<T> {
    items: Sender<T>,
    ctl: SyncSender<Ctl>,
    /// Items in the channel: bounds it, and signals a full batch once.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    signalled: Arc<AtomicBool>,
    max_batch: usize,
    signal: Signal,
    dropped: Arc<AtomicU64>,
    shut: AtomicBool,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<T: Send + 'static> Queue<T> {
    fn new<S: Sink<T>>(
        sink: S,
        cfg: QueueConfig,
        signal: Signal,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let (items, item_rx) = channel();
        let (ctl, ctl_rx) = sync_channel(64);
        let queued = Arc::new(AtomicUsize::new(0));
        let signalled = Arc::new(AtomicBool::new(false));
        let worker = {
            let worker = Worker {
                sink,
                items: item_rx,
                queued: queued.clone(),
                signalled: signalled.clone(),
                cfg,
                batch: Vec::with_capacity(cfg.max_batch),
            };
            std::thread::Builder::new()
                .name(format!("acpd-{}-export", signal.as_str()))
                .spawn(move || worker.run(ctl_rx))?
        };
        Ok(Self {
            items,
            ctl,
            queued,
            max_queue: cfg.max_queue,
            signalled,
            max_batch: cfg.max_batch,
            signal,
            dropped,
            shut: AtomicBool::new(false),
            worker: Mutex::new(Some(worker)),
        })
    }

    fn lost(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        drops::add(self.signal, Stage::ExportQueue, Source::Daemon, 1);
    }

    fn push(&self, item: T) {
        if self.shut.load(Ordering::Relaxed) {
            self.lost();
            return;
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > self.max_queue || self.items.send(item).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.lost();
            return;
        }
        if queued >= self.max_batch && !self.signalled.swap(true, Ordering::AcqRel) {
            let _ = self.ctl.try_send(Ctl::Export);
        }
    }

    fn control(
        &self,
        make: impl FnOnce(SyncSender<OTelSdkResult>) -> Ctl,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (reply, answer) = sync_channel(1);
        self.ctl
            .send(make(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }

    fn flush(&self) -> OTelSdkResult {
        self.control(Ctl::Flush, Duration::from_secs(5))
    }

    fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let result = self.control(Ctl::Shutdown, timeout);
        // Joined only when it answered: a worker stuck in an export is left to the process exit.
        if result.is_ok()
            && let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take())
        {
            let _ = worker.join();
        }
        result
    }

    fn set_resource(&self, resource: &Resource) {
        let _ = self.ctl.send(Ctl::Resource(resource.clone()));
    }
}

/// The span queue: a bounded batch processor like the SDK's `BatchSpanProcessor` that counts
/// every span it drops.
#[derive(Debug)]
pub struct QueueProcessor(Queue<SpanData>);

impl QueueProcessor {
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        cfg: QueueConfig,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        Queue::new(Spans(exporter), cfg, Signal::Traces, dropped).map(Self)
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The log queue: the same bounded, counting queue for log records (the SDK's batch log
/// processor drops without counting).
#[derive(Debug)]
pub struct LogQueueProcessor(Queue<(SdkLogRecord, InstrumentationScope)>);

impl LogQueueProcessor {
    pub fn new<E: LogExporter + 'static>(
        exporter: E,
        cfg: QueueConfig,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        Queue::new(Logs(exporter), cfg, Signal::Logs, dropped).map(Self)
    }
}

impl LogProcessor for LogQueueProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

struct Worker<T, S> {
    sink: S,
    items: Receiver<T>,
    queued: Arc<AtomicUsize>,
    signalled: Arc<AtomicBool>,
    cfg: QueueConfig,
    batch: Vec<T>,
}

impl<T, S: Sink<T>> Worker<T, S> {
    fn run(mut self, ctl: Receiver<Ctl>) {
        // Exporting must not create spans or records that feed back into this queue.
        let _quiet = Context::enter_telemetry_suppressed_scope();
        let mut due = Instant::now() + self.cfg.delay;
        loop {
            match ctl.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(Ctl::Export) => {
                    self.signalled.store(false, Ordering::Release);
                    let _ = self.drain();
                }
                Ok(Ctl::Flush(reply)) => {
                    let _ = reply.send(self.drain());
                }
                Ok(Ctl::Shutdown(reply)) => {
                    let result = self.drain().and(self.sink.shutdown());
                    let _ = reply.send(result);
                    return;
                }
                Ok(Ctl::Resource(resource)) => self.sink.set_resource(&resource),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.drain();
                    due = Instant::now() + self.cfg.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.drain();
                    return;
                }
            }
        }
    }

    /// Exports every item queued so far, in batches of at most `max_batch`.
    fn drain(&mut self) -> OTelSdkResult {
        let mut result = Ok(());
        loop {
            while self.batch.len() < self.cfg.max_batch {
                match self.items.try_recv() {
                    Ok(item) => {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        self.batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                return result;
            }
            let full = self.batch.len() >= self.cfg.max_batch;
            let items = std::mem::replace(&mut self.batch, Vec::with_capacity(self.cfg.max_batch));
            result = result.and(self.sink.export(items));
            if !full {
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// An exporter that blocks every export until released, so the queue fills.
    #[derive(Debug, Clone, Default)]
    struct Gate {
        exported: Arc<AtomicUsize>,
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    }

    impl SpanExporter for Gate {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let (lock, cv) = &*self.open;
            let guard = lock.lock().unwrap();
            let _open = cv
                .wait_timeout_while(guard, Duration::from_secs(10), |open| !*open)
                .unwrap();
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn counts_what_a_full_queue_drops_and_exports_the_rest() {
        let gate = Gate::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let cfg = QueueConfig {
            max_queue: 8,
            max_batch: 4,
            delay: Duration::from_secs(3600),
        };
        let processor = QueueProcessor::new(gate.clone(), cfg, dropped.clone()).unwrap();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("t");
        for i in 0..100 {
            tracer.in_span(format!("s{i}"), |_| {});
        }
        *gate.open.0.lock().unwrap() = true;
        gate.open.1.notify_all();
        provider.force_flush().unwrap();
        let exported = gate.exported.load(Ordering::SeqCst) as u64;
        let lost = dropped.load(Ordering::Relaxed);
        assert_eq!(exported + lost, 100, "every span is exported or counted");
        assert!(lost >= 100 - 8 - 4, "a full queue drops: {lost}");
        assert!(exported >= 8, "the queued spans leave: {exported}");
        provider.shutdown().unwrap();
    }
}
