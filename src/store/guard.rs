//! Every call into a backend runs here: a panic becomes a `StoreError`, and prints nothing.
//!
//! sled and redb report some damage by panicking (redb 4.6 `types.rs:109` unwraps a `Utf8Error`
//! on a damaged table name; a flipped page reaches `unreachable!()`). Caught, such a panic is
//! still printed by the default panic hook, with a backtrace under `RUST_BACKTRACE=1`, before
//! the clean error reaches Python. So a panic hook is installed once that delegates to the one it
//! replaces, except on a thread that is inside `quietly` right now: there it only keeps the
//! message, for the error. Panics anywhere else are reported exactly as before.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use super::{StoreError, StoreResult};

thread_local! {
    /// Set while this thread runs a backend call inside `quietly`.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The message and place of the last panic caught quietly on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL_HOOK: Once = Once::new();

fn install_hook() {
    INSTALL_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic while the thread's locals are being destroyed is reported.
            if QUIET.try_with(Cell::get).unwrap_or(false) {
                let _ = LAST_PANIC.try_with(|last| *last.borrow_mut() = Some(describe(info)));
            } else {
                previous(info);
            }
        }));
    });
}

fn describe(info: &panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    match info.location() {
        Some(at) => {
            // `redb-4.6.0/src/types.rs`, not the whole path into the cargo registry.
            let file = at.file();
            let file = file
                .find("/registry/src/")
                .and_then(|start| file[start + "/registry/src/".len()..].split_once('/'))
                .map_or(file, |(_index, crate_path)| crate_path);
            format!("{message} (at {file}:{})", at.line())
        }
        None => message,
    }
}

/// Restores the caller's quiet flag even if `f` unwinds.
struct QuietScope(bool);

impl QuietScope {
    fn enter() -> QuietScope {
        QuietScope(QUIET.with(|quiet| quiet.replace(true)))
    }
}

impl Drop for QuietScope {
    fn drop(&mut self) {
        QUIET.with(|quiet| quiet.set(self.0));
    }
}

/// Runs `f`; a panic in it prints nothing and is returned as its message (and place).
pub fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let result = {
        let _scope = QuietScope::enter();
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    result.map_err(|_| {
        LAST_PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| "no message".into())
    })
}

/// Runs `f` (a call into `backend` doing `what`); a panic in it becomes `StoreError::Corrupted`
/// naming the backend, the operation and the panic, and nothing is printed.
pub fn quietly<T>(backend: &str, what: &str, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    caught(f).unwrap_or_else(|why| {
        Err(StoreError::Corrupted(format!(
            "{backend} failed during {what}, the store is damaged: {why}"
        )))
    })
}

/// Runs `f` (work with the shared ledger); a panic in it, a bug, becomes `StoreError::Write`
/// naming `what` and the panic, and nothing is printed.
pub fn quietly_failing<T>(what: &str, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    caught(f).unwrap_or_else(|why| {
        Err(StoreError::Write(format!(
            "{what} failed unexpectedly (a panic: {why})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_corrupted_error_naming_it() {
        let result: StoreResult<()> =
            quietly("redb", "open", || panic!("entered unreachable code"));
        match result {
            Err(StoreError::Corrupted(message)) => {
                assert!(message.contains("redb failed during open"), "{message}");
                assert!(message.contains("entered unreachable code"), "{message}");
                assert!(message.contains("guard.rs"), "{message}");
            }
            other => panic!("expected Corrupted, got {other:?}"),
        }
        assert_eq!(quietly("redb", "read", || Ok(7)), Ok(7));
        assert!(!QUIET.with(Cell::get), "the quiet flag is restored");
    }

    #[test]
    fn nested_calls_restore_the_outer_flag() {
        let inner = quietly("sled", "open", || {
            let nested: StoreResult<()> = quietly("sled", "read", || panic!("inner"));
            assert!(QUIET.with(Cell::get), "still quiet inside the outer call");
            nested
        });
        assert!(matches!(inner, Err(StoreError::Corrupted(_))));
        assert!(!QUIET.with(Cell::get));
    }
}
