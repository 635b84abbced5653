//! Progress of convert's phases: bars on a terminal (stderr), one line per
//! phase otherwise; per-phase durations for the summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Phase reporting.
pub struct Progress {
    tty: bool,
    quiet: bool,
    timings: Vec<(&'static str, Duration)>,
}

/// One running phase.
pub struct Phase {
    name: &'static str,
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// Bars when stderr is a terminal; plain lines otherwise unless
    /// `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet,
            timings: Vec::new(),
        }
    }

    /// Starts a phase without a known amount of work.
    pub fn start(&self, name: &'static str, message: &str) -> Phase {
        let bar = if self.tty {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>9} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            if !self.quiet {
                eprintln!("{name}: {message}");
            }
            ProgressBar::hidden()
        };
        bar.set_prefix(name);
        bar.set_message(message.to_string());
        Phase {
            name,
            bar,
            started: Instant::now(),
        }
    }

    /// Starts a phase that moves `total` bytes.
    pub fn start_bytes(&self, name: &'static str, message: &str, total: u64) -> Phase {
        let p = self.start(name, message);
        if self.tty {
            p.bar.set_length(total);
            p.bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>9} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} [{elapsed}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
        p
    }

    /// Ends `phase` and records its duration.
    pub fn finish(&mut self, phase: Phase) {
        phase.bar.finish_and_clear();
        if self.tty && !self.quiet {
            eprintln!("{:>9} done in {:.1?}", phase.name, phase.started.elapsed());
        }
        self.timings.push((phase.name, phase.started.elapsed()));
    }

    /// Durations of the finished phases, in order.
    pub fn timings(&self) -> &[(&'static str, Duration)] {
        &self.timings
    }
}

impl Phase {
    /// Bytes done so far (a byte phase).
    pub fn set_position(&self, done: u64) {
        self.bar
            .set_position(done.min(self.bar.length().unwrap_or(u64::MAX)));
    }
}
