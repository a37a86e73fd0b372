//! What a pull tells the user: per-layer bars on a terminal, plain lines in logs and CI,
//! nothing with `--quiet`.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub enum Progress {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

/// The progress of one layer.
pub enum LayerProgress {
    Bar(ProgressBar),
    Line(String),
    Quiet,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Progress::Lines
        }
    }

    /// A status line about the whole image.
    pub fn say(&self, message: &str) {
        match self {
            // Not `println`: with no bar left to draw below it, the line would end without
            // its newline and the shell prompt would follow on it.
            Progress::Bars(bars) => bars.suspend(|| eprintln!("{message}")),
            Progress::Lines => eprintln!("{message}"),
            Progress::Quiet => {}
        }
    }

    /// Starts reporting a layer of `size` compressed bytes, named by the short digest.
    pub fn layer(&self, short: &str, size: u64) -> LayerProgress {
        match self {
            Progress::Bars(bars) => {
                let bar = bars.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(short.to_string());
                LayerProgress::Bar(bar)
            }
            Progress::Lines => {
                eprintln!("{short}: fetching {}", indicatif::HumanBytes(size));
                LayerProgress::Line(short.to_string())
            }
            Progress::Quiet => LayerProgress::Quiet,
        }
    }
}

impl LayerProgress {
    pub fn advance(&self, bytes: u64) {
        if let LayerProgress::Bar(bar) = self {
            bar.inc(bytes);
        }
    }

    pub fn finish(&self, message: &str) {
        match self {
            LayerProgress::Bar(bar) => bar.finish_with_message(message.to_string()),
            LayerProgress::Line(short) => eprintln!("{short}: {message}"),
            LayerProgress::Quiet => {}
        }
    }
}
