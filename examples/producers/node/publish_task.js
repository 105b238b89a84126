#!/usr/bin/env node
// Publish a Warren task from Node.js with amqplib, by the documented contract
// (docs/contract.md, "Publishing a task from your code"): the task goes to
// `{namespace}.tasks` with its type as routing key, persistent, with a task
// id, a priority, a timestamp and W3C trace context, `mandatory` set, on a
// confirm channel, so a task is either accepted by the broker or this fails.
//
//   WARREN_BROKER__URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//     node publish_task.js email.send '{"to": "ada@example.com", "subject": "Hi", "text": "Hello"}' --priority 5
//
// Prints the task id. The broker URL and namespace come from the same
// environment variables as Warren's own services.

import { randomBytes, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import amqp from "amqplib";

// A fresh W3C trace context (version 00, sampled). With OpenTelemetry in your
// app, inject the current span's context instead.
export function newTraceparent() {
  return `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
}

// Publishes one task on a confirm channel; resolves to its id once the broker
// has confirmed it. Rejects if the broker returned it as unroutable (no worker
// has declared a queue for the type) or refused it.
export async function publishTask(channel, namespace, type, body, { id, priority = 0, traceparent } = {}) {
  if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
    throw new RangeError("priority must be an integer 0-9");
  }
  const taskId = id ?? randomUUID();
  let returned = false;
  let closedBy = null;
  const onError = (err) => {
    closedBy = err;
  };
  const onReturn = (msg) => {
    if (msg.properties.messageId === taskId) returned = true;
  };
  channel.on("return", onReturn);
  channel.on("error", onError);
  try {
    await new Promise((resolve, reject) => {
      channel.publish(`${namespace}.tasks`, type, Buffer.from(JSON.stringify(body)), {
        messageId: taskId,
        contentType: "application/json",
        persistent: true,
        priority,
        type,
        timestamp: Math.floor(Date.now() / 1000),
        headers: { traceparent: traceparent ?? newTraceparent() },
        mandatory: true,
      }, (err) => (err ? reject(closedBy ?? new Error("the broker refused the task")) : resolve()));
    });
  } finally {
    channel.off("return", onReturn);
    channel.off("error", onError);
  }
  // The broker sends basic.return before the confirm of a message it could not route.
  if (returned) throw new Error(`no queue is bound for ${JSON.stringify(type)} (is its worker running?)`);
  return taskId;
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      id: { type: "string" },
      priority: { type: "string", default: "0" },
      traceparent: { type: "string" },
    },
  });
  if (positionals.length !== 2) {
    console.error("usage: publish_task.js <type> <json body> [--id ID] [--priority 0-9] [--traceparent TP]");
    return 2;
  }
  const [type, json] = positionals;
  const body = JSON.parse(json);
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    console.error("body must be a JSON object");
    return 2;
  }
  const url = process.env.WARREN_BROKER__URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
  const namespace = process.env.WARREN_BROKER__NAMESPACE ?? "warren";

  const connection = await amqp.connect(url);
  // A channel the broker closes (e.g. NOT_FOUND: no exchange yet) is reported
  // through the publish; the connection itself stays usable.
  connection.on("error", (err) => console.error(`connection error: ${err.message}`));
  try {
    const channel = await connection.createConfirmChannel();
    const id = await publishTask(channel, namespace, type, body, {
      id: values.id,
      priority: Number(values.priority),
      traceparent: values.traceparent,
    });
    console.log(id);
    return 0;
  } catch (err) {
    console.error(`not accepted: ${err.message}`);
    return 1;
  } finally {
    await connection.close();
  }
}

process.exitCode = await main();
