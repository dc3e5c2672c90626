//! How a batch shows its progress: plain lines, bars on a terminal, or nothing (`--json`).

use std::io::Write;

use crate::coordinator::Progress;

/// Progress as plain lines (not a terminal).
pub struct Lines<'a>(pub std::sync::Mutex<&'a mut (dyn Write + Send)>);

impl Progress for Lines<'_> {
    fn line(&self, text: &str) {
        let mut out = self.0.lock().unwrap();
        let _ = writeln!(out, "{text}");
    }
    fn phase(&self, _name: &str, _total: usize) {}
    fn tick(&self) {}
}

/// No progress (`--json`).
pub struct Quiet;

impl Progress for Quiet {
    fn line(&self, _text: &str) {}
    fn phase(&self, _name: &str, _total: usize) {}
    fn tick(&self) {}
}

/// A bar per phase on the terminal (stderr); lines print above it.
#[derive(Default)]
pub struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl Progress for Bars {
    fn line(&self, text: &str) {
        match &*self.0.lock().unwrap() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
    fn phase(&self, name: &str, total: usize) {
        let bar = indicatif::ProgressBar::new(total as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} binds {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        if let Some(old) = self.0.lock().unwrap().replace(bar) {
            old.finish();
        }
    }
    fn tick(&self) {
        if let Some(bar) = &*self.0.lock().unwrap() {
            bar.inc(1);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(bar) = self.0.lock().unwrap().take() {
            bar.finish();
        }
    }
}

/// Another printer without its per-bind lines (a large batch, without `--verbose`): the bars
/// or the summary say how far it got, and failures still print.
pub struct WithoutBindLines<'p>(pub &'p dyn Progress);

impl Progress for WithoutBindLines<'_> {
    fn line(&self, text: &str) {
        self.0.line(text)
    }
    fn bind_line(&self, _text: &str) {}
    fn phase(&self, name: &str, total: usize) {
        self.0.phase(name, total)
    }
    fn tick(&self) {
        self.0.tick()
    }
}
