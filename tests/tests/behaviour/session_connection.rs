//! A session's broker connection (`warren::broker::connect_session`), given
//! up on while lapin's recovery is still trying to reconnect it, must never
//! come back: lapin has no way to stop its recovery, and a connection left
//! to it reconnects once its node answers again and replays its consumers,
//! which nobody reads any more. Their prefetched deliveries then stay
//! unacked on that connection for as long as it lives: the node-loss test
//! on the cluster (docs/cluster.md) once stopped 16 tasks (one prefetch)
//! short that way.
//!
//! The "node" here is a TCP proxy on loopback in front of the real
//! RabbitMQ, cut (its listener closed and every connection through it
//! reset) and restored on the same port.
//!
//! And a worker whose one handler slot is busy when its node vanishes must
//! still start over on another address, without waiting for the slot, and
//! ack the redelivery of that task as a duplicate once it has finished: the
//! node-loss test once saw a worker sit for minutes, consuming nothing,
//! after losing its node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use warren::idempotency::MemoryStore;
use warren::settings::{BrokerSettings, ConsumerSettings};
use warren::{Outcome, PublishOptions, Task, TaskContext, Worker};
use warren_tests::broker::TestBroker;
use warren_tests::{WAIT, wait_until};

/// A TCP proxy to the broker on 5672 that can be cut and restored.
struct Proxy {
    port: u16,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// The accept loop and every forwarded connection: aborted by `cut`.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            port: listener.local_addr().unwrap().port(),
            accepted: Arc::default(),
            tasks: Arc::default(),
        };
        proxy.serve(listener).await;
        proxy
    }

    async fn serve(&self, listener: TcpListener) {
        let (accepted, tasks) = (self.accepted.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let forward = tokio::spawn(async move {
                    if let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await {
                        // Cut, both ends see a reset, as from a node killed
                        // with SIGKILL (the node-loss test saw ECONNRESET).
                        let _ = client.set_zero_linger();
                        let _ = broker.set_zero_linger();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                tasks.lock().await.push(forward.abort_handle());
            }
        });
        self.tasks.lock().await.push(accept.abort_handle());
    }

    /// Closes the listener and every connection through it: the "node" is
    /// gone, and a reconnect to it is refused.
    async fn cut(&self) {
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port: the "node" is back.
    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener).await;
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

#[tokio::test]
async fn a_session_connection_dropped_while_recovering_never_reconnects() {
    let broker = TestBroker::new().await.unwrap();
    let proxy = Proxy::start().await;
    let settings = BrokerSettings {
        url: proxy.url().into(),
        connect_timeout: Duration::from_secs(2),
        // lapin's recovery retries every 100-200 ms: a connection it would
        // bring back is back within a second of the restore.
        reconnect_max_delay: Duration::from_millis(100),
        ..broker.settings()
    };
    let queue = format!("{}.session-connection", broker.namespace());
    let direct = broker.connection.create_channel().await.unwrap();
    direct
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumers = || async {
        direct
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .consumer_count()
    };

    // A session consuming through the proxy, as a worker does.
    let connection = warren::broker::connect_session(&settings, "session-connection-test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(8, BasicQosOptions::default())
        .await
        .unwrap();
    let _consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "given-up".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(consumers().await, 1);
    let status = connection.status().clone();

    // The node goes; lapin starts recovering; the session gives up on it.
    proxy.cut().await;
    wait_until("lapin to start recovering", WAIT, || status.reconnecting()).await;
    drop(_consumer);
    drop(channel);
    let retired = connection.retire();
    let accepted_before = proxy.accepted.load(Ordering::SeqCst);

    // The node comes back while lapin's recovery would still be trying:
    // the retired connection ends instead of reconnecting.
    proxy.restore().await;
    tokio::time::timeout(WAIT, retired)
        .await
        .expect("the retired connection was not gone within 30 s");
    assert_eq!(
        proxy.accepted.load(Ordering::SeqCst),
        accepted_before,
        "the dropped connection reconnected through the restored proxy"
    );
    assert_eq!(consumers().await, 0, "a replayed consumer is on the queue");

    let _ = direct
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    proxy.cut().await;
    broker.cleanup().await.unwrap();
}

#[derive(Debug, Deserialize)]
struct Hold {
    n: usize,
}

impl Task for Hold {
    const TYPE: &'static str = "sc.hold";
}

#[tokio::test]
async fn a_worker_whose_only_slot_is_busy_when_its_node_vanishes_starts_over_elsewhere() {
    let broker = TestBroker::new().await.unwrap();
    let proxy = Proxy::start().await;
    // The "node" through the proxy first, the broker itself second: the
    // fresh connection of a session that starts over goes to the second.
    let settings = BrokerSettings {
        url: format!("{}, amqp://guest:guest@127.0.0.1:5672/%2f", proxy.url()).into(),
        connect_timeout: Duration::from_secs(1),
        // lapin's recovery keeps trying the vanished "node" for some 20 s.
        reconnect_max_delay: Duration::from_secs(1),
        ..broker.settings()
    };
    // One slot, one prefetched delivery.
    let consumer = ConsumerSettings {
        prefetch: 1,
        concurrency: 1,
        ..ConsumerSettings::default()
    };
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (r, g) = (runs.clone(), gate.clone());
    let worker = Worker::new("slot-test", "sc", &["sc.#"], settings, consumer)
        .with_idempotency(Some(Arc::new(MemoryStore::new(
            100,
            Duration::from_secs(600),
        ))))
        .handle(move |_ctx: TaskContext, task: Hold| {
            let (r, g) = (r.clone(), g.clone());
            async move {
                r[task.n].fetch_add(1, Ordering::SeqCst);
                if task.n == 0
                    && let Ok(permit) = g.acquire().await
                {
                    permit.forget();
                }
                Ok(Outcome::done())
            }
        });
    let status = worker.status();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await.unwrap() }
    });
    wait_until("the worker to consume", WAIT, || status.is_ready()).await;
    assert!(
        proxy.accepted.load(Ordering::SeqCst) > 0,
        "the worker did not connect through the proxy"
    );

    // Task 0 holds the one slot; its node vanishes (both ends of the
    // connection reset, a reconnect refused) while its handler still runs.
    let publish = |n: usize| {
        let broker = &broker;
        async move {
            broker
                .publish(Hold::TYPE, &json!({ "n": n }), PublishOptions::default())
                .await
                .unwrap()
        }
    };
    publish(0).await;
    wait_until("task 0 to start", WAIT, || {
        runs[0].load(Ordering::SeqCst) == 1
    })
    .await;
    proxy.cut().await;
    wait_until("the worker to see its connection lost", WAIT, || {
        !status.is_ready()
    })
    .await;
    // With its one slot still taken, the worker gives up on the lost
    // connection and consumes again on the broker's own address.
    wait_until(
        "the worker to consume again, its slot still busy",
        WAIT,
        || status.is_ready(),
    )
    .await;
    assert_eq!(runs[0].load(Ordering::SeqCst), 1);
    gate.add_permits(1);

    // Task 0 finishes (its ack has only the lost connection to go out on);
    // the broker requeued it with that connection, and the fresh session
    // acks it as a duplicate without running it again, then runs task 1.
    publish(1).await;
    wait_until("task 1 to run on the fresh connection", WAIT, || {
        runs[1].load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(runs[0].load(Ordering::SeqCst), 1, "task 0 ran again");

    stop.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    proxy.cut().await;
    broker.cleanup_stems(&["sc"], &[]).await.unwrap();
}
