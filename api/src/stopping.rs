//! The server's stop as the handlers see it: shared by the server, which stops, and the routes
//! (and `fuzzing`), which only listen, so that neither reaches into the other.

use tokio::sync::watch;

/// Tells whoever holds a clone that the server is stopping, so that answers with no natural
/// end (the events stream) end instead of holding up the graceful shutdown. The receiver is
/// open to the crate so that `fuzzing` can make one that reads as stopped from the start.
#[derive(Debug, Clone)]
pub(crate) struct Stopping(pub(crate) watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the handle asks the server to stop or is gone; at once if that already
    /// happened, however often it is asked.
    pub(crate) async fn requested(mut self) {
        // An error means the sender was dropped: also a reason to stop.
        let _ = self.0.wait_for(|&stop| stop).await;
    }
}
