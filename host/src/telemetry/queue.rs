//! The span queue between the request path and the export stage: a bounded batch processor
//! like the SDK's `BatchSpanProcessor` (one thread, `block_on` for the exporter), but one that
//! counts every span it drops, so `acpd.telemetry.dropped` tells operators what was lost.
//! The SDK's processor only logs its first drop and the total at shutdown.

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
}

impl QueueConfig {
    /// Defaults as the SDK's (2048 / 512), overridable by the standard `OTEL_BSP_*` variables.
    pub fn from_env(delay: Duration) -> Self {
        let num = |k: &str| super::env(k).and_then(|v| v.trim().parse::<u64>().ok());
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE").map_or(2048, |n| n.max(1) as usize);
        let max_batch = num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .map_or(512, |n| n.max(1) as usize)
            .min(max_queue);
        let delay = num("OTEL_BSP_SCHEDULE_DELAY").map_or(delay, Duration::from_millis);
        Self {
            max_queue,
            max_batch,
            delay,
        }
    }
}

enum Ctl {
    /// A batch's worth of spans is waiting.
    Export,
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
    Resource(Resource),
}

/// Spans travel on a channel nobody blocks on, so ending a span wakes no thread; the worker
/// sleeps on the control channel until a batch is full, the delay passes, or it is asked.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: SyncSender<SpanData>,
    ctl: SyncSender<Ctl>,
    /// Spans in the channel, to signal a full batch once.
    queued: Arc<AtomicUsize>,
    signalled: Arc<AtomicBool>,
    max_batch: usize,
    dropped: Arc<AtomicU64>,
    shut: AtomicBool,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        cfg: QueueConfig,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let (spans, span_rx) = sync_channel(cfg.max_queue);
        let (ctl, ctl_rx) = sync_channel(64);
        let queued = Arc::new(AtomicUsize::new(0));
        let signalled = Arc::new(AtomicBool::new(false));
        let worker = {
            let worker = Worker {
                exporter,
                spans: span_rx,
                queued: queued.clone(),
                signalled: signalled.clone(),
                cfg,
                batch: Vec::with_capacity(cfg.max_batch),
            };
            std::thread::Builder::new()
                .name("acpd-span-export".into())
                .spawn(move || worker.run(ctl_rx))?
        };
        Ok(Self {
            spans,
            ctl,
            queued,
            signalled,
            max_batch: cfg.max_batch,
            dropped,
            shut: AtomicBool::new(false),
            worker: Mutex::new(Some(worker)),
        })
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
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.shut.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {
                let queued = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
                if queued >= self.max_batch && !self.signalled.swap(true, Ordering::AcqRel) {
                    let _ = self.ctl.try_send(Ctl::Export);
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Ctl::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
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

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.ctl.send(Ctl::Resource(resource.clone()));
    }
}

struct Worker<E> {
    exporter: E,
    spans: Receiver<SpanData>,
    queued: Arc<AtomicUsize>,
    signalled: Arc<AtomicBool>,
    cfg: QueueConfig,
    batch: Vec<SpanData>,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self, ctl: Receiver<Ctl>) {
        // Exporting must not create spans that feed back into this queue.
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
                    let result = self.drain().and(self.exporter.shutdown());
                    let _ = reply.send(result);
                    return;
                }
                Ok(Ctl::Resource(resource)) => self.exporter.set_resource(&resource),
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

    /// Exports every span queued so far, in batches of at most `max_batch`.
    fn drain(&mut self) -> OTelSdkResult {
        let mut result = Ok(());
        loop {
            while self.batch.len() < self.cfg.max_batch {
                match self.spans.try_recv() {
                    Ok(span) => {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        self.batch.push(span);
                    }
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                return result;
            }
            let full = self.batch.len() >= self.cfg.max_batch;
            let spans = std::mem::replace(&mut self.batch, Vec::with_capacity(self.cfg.max_batch));
            result = result.and(futures::executor::block_on(self.exporter.export(spans)));
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
