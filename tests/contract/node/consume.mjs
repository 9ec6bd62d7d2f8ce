// A consumer in another language, written only from the published contract (README, "Wire
// format", and the exported JSON Schemas): it reads every message of a real stream with an
// ordered JetStream consumer, parses it with the official CloudEvents SDK (structured mode,
// strict validation), checks the attribute types CloudEvents gives them, and validates `data`
// against the schema its `dataschema` names.
//
// Environment: NATS_URL, STREAM, SCHEMAS (a directory of *.schema.json), EXPECTED (how many
// messages the stream holds). Prints one JSON object: {"checked": N, "types": {...}, "errors": [...]}.
// Exit status 0 when every message conforms, 1 otherwise.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { HTTP } from "cloudevents";
import { connect } from "nats";

const { NATS_URL, STREAM, SCHEMAS } = process.env;
const EXPECTED = Number(process.env.EXPECTED);
const INT32_MAX = 2 ** 31 - 1;

const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
for (const file of readdirSync(SCHEMAS).filter((f) => f.endsWith(".schema.json"))) {
  ajv.addSchema(JSON.parse(readFileSync(join(SCHEMAS, file), "utf8")));
}

const errors = [];
const types = {};
let checked = 0;
let previousSequence = "";

function check(text) {
  const where = `message ${checked + 1}`;
  const event = HTTP.toEvent({
    headers: { "content-type": "application/cloudevents+json; charset=utf-8" },
    body: text,
  });
  event.validate();
  if (typeof event.sequence !== "string" || !/^[0-9]{19}$/.test(event.sequence)) {
    errors.push(`${where}: sequence ${JSON.stringify(event.sequence)} is not a 19-digit string`);
  } else if (!(event.sequence > previousSequence)) {
    errors.push(`${where}: sequence ${event.sequence} does not order after ${previousSequence}`);
  } else {
    previousSequence = event.sequence;
  }
  const version = event.aggregateversion;
  if (!Number.isInteger(version) || version < 1 || version > INT32_MAX) {
    errors.push(`${where}: aggregateversion ${JSON.stringify(version)} is not a CloudEvents Integer`);
  }
  if (event.type.includes(":")) {
    errors.push(`${where}: type ${event.type} looks like a module path`);
  }
  const raw = JSON.parse(text);
  if (raw.data === null || typeof raw.data !== "object" || Array.isArray(raw.data)) {
    errors.push(`${where}: data is not a JSON object`);
    return;
  }
  if ("timestamp" in raw.data) {
    errors.push(`${where}: data repeats the time as data.timestamp`);
  }
  if (text.includes('"_type_"')) {
    errors.push(`${where}: data carries transcoder tags`);
  }
  const validate = ajv.getSchema(event.dataschema);
  if (!validate) {
    errors.push(`${where}: no exported schema has $id ${event.dataschema}`);
  } else if (!validate(raw.data)) {
    errors.push(`${where}: data does not fit ${event.dataschema}: ${ajv.errorsText(validate.errors)}`);
  }
  types[event.type] = (types[event.type] || 0) + 1;
}

const nc = await connect({ servers: NATS_URL });
try {
  const consumer = await nc.jetstream().consumers.get(STREAM); // an ordered consumer
  const deadline = Date.now() + 20_000;
  while (checked < EXPECTED && Date.now() < deadline) {
    const batch = await consumer.fetch({ max_messages: EXPECTED - checked, expires: 2_000 });
    for await (const message of batch) {
      try {
        check(message.string());
      } catch (e) {
        errors.push(`message ${checked + 1}: ${e && e.message ? e.message : e} ${JSON.stringify(e && e.errors)}`);
      }
      checked += 1;
    }
  }
} finally {
  await nc.close();
}
if (checked !== EXPECTED) {
  errors.push(`read ${checked} messages, expected ${EXPECTED}`);
}
console.log(JSON.stringify({ checked, types, errors }));
process.exit(errors.length === 0 ? 0 : 1);
