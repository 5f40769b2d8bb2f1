// Publish UsageEvents to Kafka from Node.js (kafkajs), validated first
// against schemas/usage_event.schema.json (ajv, draft 2020-12, ajv-formats).
//
//   node publish.js TENANT FEATURE QUANTITY   publish one event, e.g. acme api_calls 1
//   node publish.js check [VECTORS.jsonl]     validate the shared test vectors, print verdicts
//   node publish.js send MESSAGES.jsonl       validate each message; publish the valid ones
//
// KAFKA_BROKERS (127.0.0.1:19092) and USAGE_TOPIC (usage.events) say where to
// publish; USAGE_SCHEMA overrides the schema path. A .jsonl file has one JSON
// object per line: {"name": ..., "b64": <message bytes, base64>}.
//
// The producer keeps kafkajs's defaults except acks=all (-1) and idempotence:
// its default partitioner (2.x) is Java's murmur2 on the key, the pipeline's rule.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseJSON } from "@humanwhocodes/momoa";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { Kafka, logLevel } from "kafkajs";
import { v7 as uuidv7 } from "uuid";

const here = dirname(fileURLToPath(import.meta.url));
const SCHEMA = process.env.USAGE_SCHEMA || join(here, "..", "..", "schemas", "usage_event.schema.json");
const VECTORS = join(here, "..", "testdata", "vectors.jsonl");
const MAX_BYTES = 32768; // one encoded event, as the consumer counts it
const MAX_FUTURE_MS = 5 * 60 * 1000;
const ATTEMPTS = 5; // publish rounds; every round resends the same bytes, so the same id
const CLIENT_ID = "usagemeter-example-node";
// Kafka records do not carry the client id: this optional header names the
// publisher in the consumer's re-route metrics (the publisher to fix).
const HEADERS = { "usage.publisher": CLIENT_ID };

class Refused extends Error {}

// toValue turns momoa's syntax tree into a plain value, refusing what
// JSON.parse would let through: duplicate member names (JSON.parse keeps the
// last) and unpaired surrogate escapes. Numbers keep their source text,
// because a JavaScript number is a double: 999999999999999999.999999999
// would become 1e18.
function toValue(node, text, path) {
  switch (node.type) {
    case "Object": {
      const obj = {};
      const seen = new Set();
      for (const m of node.members) {
        const name = m.name.value;
        if (LONE_SURROGATE.test(name)) throw new Refused(`${path}: unpaired surrogate escape in a member name`);
        if (seen.has(name)) throw new Refused(`${name}: duplicate member name`);
        seen.add(name);
        // defineProperty: a member named __proto__ is data, not the prototype.
        Object.defineProperty(obj, name, { value: toValue(m.value, text, name), enumerable: true, writable: true, configurable: true });
      }
      return obj;
    }
    case "Array":
      return node.elements.map((e) => toValue(e.value, text, path));
    case "String":
      if (LONE_SURROGATE.test(node.value)) throw new Refused(`${path}: unpaired surrogate escape`);
      return node.value;
    case "Number":
      return { raw: text.slice(node.range[0], node.range[1]), value: node.value, [NUMBER]: true };
    case "Boolean":
      return node.value;
    case "Null":
      return null;
    default:
      throw new Refused(`${path}: unexpected ${node.type}`);
  }
}
const NUMBER = Symbol("number");
// In a /u regex a surrogate pair is one code point; only a lone half is \p{Cs}
// (String.prototype.isWellFormed needs Node 20).
const LONE_SURROGATE = /\p{Cs}/u;

// canonical is the decimal string of a JSON number's value, from its
// source text split by the caller (2500.0 -> "2500", 25E0001 -> "250", -0 ->
// "0", 1e-10 -> "0.0000000001"), or null when it is absurdly long (far
// outside the contract's 18 + 9 digits: refused anyway).
function canonical(sign, intPart, fracPart, exp) {
  let digits = (intPart + fracPart).replace(/^0+/, "");
  if (digits === "") return "0"; // any zero, whatever its sign or exponent
  // value = digits x 10^scale
  let scale = exp - fracPart.length;
  const trailing = digits.length - digits.replace(/0+$/, "").length;
  digits = digits.slice(0, digits.length - trailing);
  scale += trailing;
  if (digits.length + Math.abs(scale) > 200) return null;
  let s;
  if (scale >= 0) s = digits + "0".repeat(scale);
  else if (-scale < digits.length) s = digits.slice(0, digits.length + scale) + "." + digits.slice(digits.length + scale);
  else s = "0." + "0".repeat(-scale - digits.length) + digits;
  return sign + s;
}

// plain turns the tree's numbers into what ajv checks. A JSON-number
// quantity becomes its exact decimal string, which the schema's string
// branch then judges by value exactly as the pipeline does (<= 18 integer
// and 9 fractional digits, no sign); every other number is a double, which
// is exact for the small integers the schema allows there (schema_version).
function plain(v, key) {
  if (v && typeof v === "object" && v[NUMBER]) {
    if (key === "quantity") {
      const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(v.raw);
      const s = canonical(m[1], m[2], m[3] || "", Number(m[4] || 0));
      return s === null ? -1 : s; // null: far too large or too precise; -1 is refused too
    }
    // A double rounds 1.0000000000000000001 to the integer 1; keep it a
    // non-integer so that "type": "integer" judges it by value, as Go does.
    const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(v.raw);
    const s = canonical(m[1], m[2], m[3] || "", Number(m[4] || 0));
    return s !== null && s.includes(".") && Number.isInteger(v.value) ? v.value + 0.5 : v.value;
  }
  if (Array.isArray(v)) return v.map((x) => plain(x));
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      Object.defineProperty(out, k, { value: plain(x, key === undefined ? k : null), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return v;
}

export class EventValidator {
  // The consumer's contract: the JSON Schema, plus the rules its
  // description lists as inexpressible in JSON Schema (size, duplicate
  // names, UTF-8, future skew, years 1970-2105, fractional digits of a
  // JSON-number quantity, billing_period = the timestamp's UTC month).
  constructor(schemaPath = SCHEMA) {
    const ajv = new Ajv2020({ allErrors: true, strict: false });
    addFormats(ajv, ["date-time"]);
    this.check = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));
  }

  // validate returns the event from the message bytes (a Buffer), or throws Refused.
  validate(data, now = Date.now()) {
    if (data.length > MAX_BYTES) throw new Refused(`event: ${data.length} bytes, more than ${MAX_BYTES}`);
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(data);
    } catch {
      throw new Refused("event: not UTF-8");
    }
    let tree;
    try {
      tree = parseJSON(text, { mode: "json", ranges: true, tokens: false });
    } catch (e) {
      throw new Refused(`event: not JSON (${e.message.split("\n")[0]})`);
    }
    const event = plain(toValue(tree.body, text, "event"));
    if (!this.check(event)) {
      // Every message about the first failing member: a oneOf (quantity) fails
      // in each branch, and the branch that matters is not always the first.
      const path = this.check.errors[0].instancePath;
      const why = this.check.errors.filter((e) => e.instancePath === path).map((e) => e.message);
      throw new Refused(`${path.replace(/^\//, "") || "event"}: ${[...new Set(why)].join("; ")}`);
    }
    const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|([+-])(\d\d):(\d\d))$/.exec(event.timestamp);
    const offsetMin = m[8] === "Z" ? 0 : (m[9] === "-" ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11]));
    // Date.UTC takes years 0-99 as 1900-1999: setUTCFullYear does not.
    const d = new Date(0);
    d.setUTCFullYear(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
    d.setUTCHours(Number(m[4]), Number(m[5]) - offsetMin, Number(m[6]), 0);
    const ms = d.getTime() + (m[7] ? Number((m[7].slice(1) + "00").slice(0, 3)) : 0); // a Date holds milliseconds
    if (ms > now + MAX_FUTURE_MS) throw new Refused(`timestamp: ${event.timestamp} is more than 5 minutes in the future`);
    const year = new Date(ms).getUTCFullYear();
    if (year < 1970 || year > 2105) throw new Refused(`timestamp: ${event.timestamp} is outside 1970-2105 in UTC`);
    const month = `${String(year).padStart(4, "0")}-${String(new Date(ms).getUTCMonth() + 1).padStart(2, "0")}`;
    if (event.billing_period != null && event.billing_period !== month) {
      throw new Refused(`billing_period: ${event.billing_period} is not the UTC month of timestamp (${month})`);
    }
    return event;
  }
}

// newEvent fixes the id (UUIDv7) once: a retry must send the same id.
export function newEvent(tenant, feature, quantity) {
  return {
    id: uuidv7(),
    tenant_id: tenant,
    feature_type: feature,
    quantity, // an exact decimal string such as "1.5", never a JavaScript number
    timestamp: new Date().toISOString(),
  };
}

function newProducer() {
  // kafkajs 2.x warns that its default partitioner changed to Java's murmur2,
  // which is the one this pipeline wants: nothing to set, nothing to warn about.
  process.env.KAFKAJS_NO_PARTITIONER_WARNING ??= "1";
  const kafka = new Kafka({
    clientId: CLIENT_ID,
    brokers: (process.env.KAFKA_BROKERS || "127.0.0.1:19092").split(","),
    logLevel: logLevel.WARN,
  });
  return kafka.producer({ idempotent: true });
}

// publish sends [key, value] pairs with acks=all; a failed round (a broker
// that cannot be reached included) is sent again, byte for byte (same id, so
// counted once), up to ATTEMPTS rounds. kafkajs retries each request itself
// first.
async function publish(producer, topic, messages) {
  let lastErr;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    try {
      await producer.connect(); // no-op when connected
      await producer.send({ topic, acks: -1, messages: messages.map(([key, value]) => ({ key, value, headers: HEADERS })) });
      return null;
    } catch (e) {
      lastErr = e;
      console.error(`send failed (attempt ${attempt}): ${e.message}`);
      await new Promise((r) => setTimeout(r, Math.min(2 ** attempt, 10) * 100));
    }
  }
  return lastErr;
}

function readJsonl(path) {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      const r = JSON.parse(l);
      return [r.name, Buffer.from(r.b64, "base64")];
    });
}

async function cmdCheck(path) {
  const v = new EventValidator();
  const out = [];
  for (const [name, data] of readJsonl(path)) {
    try {
      v.validate(data);
      out.push(`${name}\tok`);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      out.push(`${name}\trefused: ${e.message.split("\n")[0]}`);
    }
  }
  process.stdout.write(out.join("\n") + "\n");
  return 0;
}

async function cmdSend(path, topic) {
  const v = new EventValidator();
  const messages = [];
  let refused = 0;
  for (const [name, data] of readJsonl(path)) {
    try {
      const event = v.validate(data);
      messages.push([event.tenant_id, data]);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      console.log(`${name}\trefused: ${e.message.split("\n")[0]}`); // never sent: it would only reach the DLQ
      refused++;
    }
  }
  const producer = newProducer();
  try {
    const err = await publish(producer, topic, messages);
    console.log(JSON.stringify({ sent: err ? 0 : messages.length, refused, failed: err ? messages.length : 0 }));
    return err ? 1 : 0;
  } finally {
    await producer.disconnect(); // after every send has its acks
  }
}

async function cmdPublish(tenant, feature, quantity, topic) {
  const event = newEvent(tenant, feature, quantity);
  const data = Buffer.from(JSON.stringify(event));
  try {
    new EventValidator().validate(data);
  } catch (e) {
    if (!(e instanceof Refused)) throw e;
    console.error(`not published: ${e.message}`);
    return 2;
  }
  const producer = newProducer();
  try {
    const err = await publish(producer, topic, [[tenant, data]]);
    if (err) {
      console.error(`not published after ${ATTEMPTS} attempts: ${event.id}`);
      return 1;
    }
    console.log(`published ${event.id} to ${topic}`);
    return 0;
  } finally {
    await producer.disconnect();
  }
}

async function main(argv) {
  const topic = process.env.USAGE_TOPIC || "usage.events";
  if (argv[0] === "check" && argv.length <= 2) return cmdCheck(argv[1] || VECTORS);
  if (argv[0] === "send" && argv.length === 2) return cmdSend(argv[1], topic);
  if (argv.length === 3) return cmdPublish(argv[0], argv[1], argv[2], topic);
  console.error("usage: node publish.js TENANT FEATURE QUANTITY | check [VECTORS.jsonl] | send MESSAGES.jsonl");
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`error: ${e.message}`);
    process.exit(1);
  },
);
