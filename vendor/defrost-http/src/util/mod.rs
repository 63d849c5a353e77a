pub use self::custom_stream::CustomStream;
pub use self::messages_queue::{MessagesQueue, Popped};
pub use self::sequential::{SequentialWriter, SequentialWriterBuilder};
pub use self::task_pool::TaskPool;

pub(crate) mod body;
pub(crate) mod conn;
mod custom_stream;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) mod idle;
mod messages_queue;
mod sequential;
mod task_pool;
