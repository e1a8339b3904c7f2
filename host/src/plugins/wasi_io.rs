//! `wasi:io` (streams and poll) as a plugin sees it. wasmtime-wasi's synchronous bindings run a
//! blocking stream call, a poll or a stream's drop as a future on the ambient tokio runtime
//! (`block_on`), which panics on one of its async workers, where the request-path hooks run.
//! Served here instead, the same calls step out of async (`block_in_place`) when they are made,
//! and only then: a guest printing the panic it is about to trap with. An ordinary hook call
//! runs on the worker as it is, without the hand-off of the worker's core to another thread
//! that stepping out costs every call (and the blocking-pool threads those hand-offs keep
//! alive: "Round eight: memory" in BENCHMARKS.md).
//!
//! Every method is wasmtime-wasi's own, called through; the streams a plugin has are the
//! sinks and empty input of a WASI that grants nothing (`kernels::State`).

use wasmtime::Engine;
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::poll::{self, Pollable};
use wasmtime_wasi::p2::bindings::sync::io::streams::{self, InputStream, OutputStream};
use wasmtime_wasi::p2::{StreamError, StreamResult};

use super::kernels::State;

/// The component's imports that reach wasmtime-wasi's `block_on` by other ways than `wasi:io`
/// (sockets; files, though a plugin is given none): a plugin importing any of them steps out
/// of async for the whole of each call, as before this module.
const BLOCKING_ELSEWHERE: [&str; 2] = ["wasi:sockets/", "wasi:filesystem/"];

/// Whether `component` imports any of [`BLOCKING_ELSEWHERE`].
pub fn blocks_elsewhere(component: &Component, engine: &Engine) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| BLOCKING_ELSEWHERE.iter().any(|p| name.starts_with(p)))
}

/// Adds `wasi:io/poll` and `wasi:io/streams` over wasmtime-wasi's (call after
/// `add_to_linker_sync`).
pub fn shadow(linker: &mut Linker<State>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let added = poll::add_to_linker::<State, HasIo>(linker, |s| Io(s.table()))
        .and_then(|()| streams::add_to_linker::<State, HasIo>(linker, |s| Io(s.table())));
    linker.allow_shadowing(false);
    added.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs `f` outside async when on a worker of a multi-threaded tokio runtime (where
/// wasmtime-wasi's `block_on` would panic); elsewhere (export threads, the CLI, `init` on the
/// blocking pool) straight through.
pub fn outside_async<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

struct HasIo;

impl HasData for HasIo {
    type Data<'a> = Io<'a>;
}

struct Io<'a>(&'a mut ResourceTable);

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, e: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, e)
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<()> {
        outside_async(|| streams::HostOutputStream::drop(self.0, s))
    }

    fn check_write(&mut self, s: Resource<OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, s)
    }

    fn write(&mut self, s: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, s, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        s: Resource<OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        outside_async(|| streams::HostOutputStream::blocking_write_and_flush(self.0, s, bytes))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        s: Resource<OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        outside_async(|| streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, s, len))
    }

    fn subscribe(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostOutputStream::subscribe(self.0, s)
    }

    fn write_zeroes(&mut self, s: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, s, len)
    }

    fn flush(&mut self, s: Resource<OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, s)
    }

    fn blocking_flush(&mut self, s: Resource<OutputStream>) -> StreamResult<()> {
        outside_async(|| streams::HostOutputStream::blocking_flush(self.0, s))
    }

    fn splice(
        &mut self,
        dst: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        outside_async(|| streams::HostOutputStream::blocking_splice(self.0, dst, src, len))
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, s: Resource<InputStream>) -> wasmtime::Result<()> {
        outside_async(|| streams::HostInputStream::drop(self.0, s))
    }

    fn read(&mut self, s: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, s, len)
    }

    fn blocking_read(&mut self, s: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        outside_async(|| streams::HostInputStream::blocking_read(self.0, s, len))
    }

    fn skip(&mut self, s: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, s, len)
    }

    fn blocking_skip(&mut self, s: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        outside_async(|| streams::HostInputStream::blocking_skip(self.0, s, len))
    }

    fn subscribe(&mut self, s: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostInputStream::subscribe(self.0, s)
    }
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<Pollable>>) -> wasmtime::Result<Vec<u32>> {
        outside_async(|| poll::Host::poll(self.0, pollables))
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, p: Resource<Pollable>) -> wasmtime::Result<bool> {
        outside_async(|| poll::HostPollable::ready(self.0, p))
    }

    fn block(&mut self, p: Resource<Pollable>) -> wasmtime::Result<()> {
        outside_async(|| poll::HostPollable::block(self.0, p))
    }

    fn drop(&mut self, p: Resource<Pollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, p)
    }
}
