//! Test fixture: a plugin that writes a line to stderr at every request-path call, then counts
//! the call (`host.count("printed", 1)`); in mode `panic` it panics instead, and Rust prints the
//! panic message to stderr before the guest traps. Unlike the hostile fixture it imports no
//! sockets or files (only what a Rust guest's std needs: `wasi:cli`, `wasi:io`), so the daemon
//! runs its calls on the async workers themselves: a blocking WASI write there must step out of
//! async when it is made, not panic the daemon.

use acpd_plugin_sdk::{Attrs, Config, Edits, Error, Observer, Plugin, count, export_plugin};

#[derive(serde::Deserialize)]
struct Cfg {
    mode: String,
}

pub struct Printer {
    panic: bool,
}

impl Plugin for Printer {
    const NAME: &'static str = "printer";
    const VERSION: &'static str = "0.1.0";

    fn init(config: Config) -> Result<Self, Error> {
        let c: Cfg = config.parse()?;
        match c.mode.as_str() {
            "print" | "panic" => Ok(Printer {
                panic: c.mode == "panic",
            }),
            other => Err(Error::config(format!("unknown mode {other:?}"))),
        }
    }
}

impl Printer {
    fn call(&self, hook: &str) {
        if self.panic {
            panic!("printer: panicking at {hook} on purpose");
        }
        eprintln!("printer: called at {hook}");
        count("printed", 1);
    }
}

impl Observer for Printer {
    fn on_request(&mut self, _attrs: &Attrs<'_>, _out: &mut Edits) -> Result<(), Error> {
        self.call("request");
        Ok(())
    }

    fn on_dispatch(&mut self, _attrs: &Attrs<'_>, _out: &mut Edits) -> Result<(), Error> {
        self.call("dispatch");
        Ok(())
    }
}

export_plugin!(Printer);
