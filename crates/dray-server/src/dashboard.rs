//! The web dashboard served at `/`: static assets embedded in the binary, and a live stream of
//! snapshots over server-sent events.
//!
//! STUB: to be filled in (issue #5).

use crate::app::App;

pub(crate) fn routes(router: axum::Router<App>, _app: &App) -> axum::Router<App> {
    router
}
