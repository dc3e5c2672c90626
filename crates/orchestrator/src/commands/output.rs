//! Where every command prints: results on `out`, errors on `err`, as text or as JSON, the
//! same way for every command.

use std::fmt::Display;
use std::io::Write;

use crate::exit;
pub use crate::library::Reason;

/// The two streams a command writes to. Tests pass buffers; the binary passes stdout and
/// stderr. Writing errors (a closed pipe) are ignored: the exit code still tells.
pub struct Output<'a> {
    pub out: &'a mut (dyn Write + Send),
    pub err: &'a mut dyn Write,
    /// The command was given `--json`: a refusal is also a JSON error object on `out`.
    pub json: bool,
}

/// Why a command stops before touching anything: the exit code, the errors (each with its
/// [`Reason`]), and the closing line that says what was (not) changed.
#[derive(Debug)]
pub struct Refusal {
    pub code: i32,
    pub errors: Vec<String>,
    /// One per error, in the same order.
    pub reasons: Vec<Reason>,
    pub closing: Option<&'static str>,
}

impl Refusal {
    /// The refusal as the `error` object of `--json` output.
    pub fn to_json(&self) -> serde_json::Value {
        let kind = match self.code {
            exit::FAILED => "failed",
            exit::ATTENTION => "attention",
            _ => "invalid",
        };
        serde_json::json!({
            "kind": kind,
            "exit": self.code,
            "message": self.errors.first(),
            "errors": self.errors,
            "changed": false,
        })
    }

    /// Invalid input (exit 2) with "nothing was changed": each error with its reason.
    pub fn invalid(problems: Vec<(Reason, String)>) -> Refusal {
        let (reasons, errors) = problems.into_iter().unzip();
        Refusal {
            code: exit::INVALID,
            errors,
            reasons,
            closing: Some("nothing was changed"),
        }
    }

    /// Errors of one reason, with its exit code.
    pub fn of(reason: Reason, errors: Vec<String>, closing: Option<&'static str>) -> Refusal {
        Refusal {
            code: reason.code(),
            reasons: vec![reason; errors.len()],
            errors,
            closing,
        }
    }

    /// One invalid argument (exit 2), said alone.
    pub fn argument(error: String) -> Refusal {
        Refusal::of(Reason::Argument, vec![error], None)
    }
}

impl Output<'_> {
    /// A line of the command's result.
    pub fn line(&mut self, text: impl Display) {
        let _ = writeln!(self.out, "{text}");
    }

    /// The command's result as JSON, pretty-printed.
    pub fn json(&mut self, value: &serde_json::Value) {
        let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        let _ = writeln!(self.out, "{text}");
    }

    /// An error line on the error stream.
    pub fn error(&mut self, text: impl Display) {
        let _ = writeln!(self.err, "error: {text}");
    }

    /// A line on the error stream, as it is.
    pub fn note(&mut self, text: impl Display) {
        let _ = writeln!(self.err, "{text}");
    }

    /// Prints a refusal and returns its exit code. With `--json` it is also printed on `out`
    /// as `{"error": {"kind", "exit", "message", "errors", "changed"}}`: `kind` is `failed`
    /// (exit 1: another run is busy there), `invalid` (exit 2) or `attention` (exit 3),
    /// `message` the first error, `errors` all of them, and `changed` always false.
    pub fn refuse(&mut self, refusal: Refusal) -> i32 {
        for e in &refusal.errors {
            self.error(e);
        }
        if let Some(closing) = refusal.closing {
            self.note(closing);
        }
        if self.json {
            self.json(&serde_json::json!({ "error": refusal.to_json() }));
        }
        refusal.code
    }

    /// Prints a command's text result or its error, and returns the exit code.
    pub fn result(&mut self, result: Result<String, crate::manage::Failure>) -> i32 {
        match result {
            Ok(text) => {
                self.line(text);
                exit::OK
            }
            Err((code, text)) => self.refuse(Refusal {
                code,
                errors: vec![text],
                reasons: vec![Reason::Other],
                closing: None,
            }),
        }
    }
}
