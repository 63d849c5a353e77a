pub use self::custom_stream::CustomStream;
pub use self::messages_queue::MessagesQueue;
pub use self::sequential::{SequentialWriter, SequentialWriterBuilder};
pub use self::task_pool::TaskPool;

pub(crate) mod body;
pub(crate) mod conn;
mod custom_stream;
mod messages_queue;
mod sequential;
mod task_pool;
