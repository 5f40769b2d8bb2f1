// Publish UsageEvents to Kafka from Java (kafka-clients), validated first
// against schemas/usage_event.schema.json (networknt json-schema-validator,
// draft 2020-12, format assertions on).
//
//   java -cp 'target/dependency/*' Publish.java TENANT FEATURE QUANTITY   publish one event
//   java -cp 'target/dependency/*' Publish.java check [VECTORS.jsonl]     validate the shared test vectors
//   java -cp 'target/dependency/*' Publish.java send MESSAGES.jsonl       validate each; publish the valid ones
//
// KAFKA_BROKERS (127.0.0.1:19092) and USAGE_TOPIC (usage.events) say where to
// publish; USAGE_SCHEMA overrides the schema path. A .jsonl file has one JSON
// object per line: {"name": ..., "b64": <message bytes, base64>}.
//
// The producer keeps kafka-clients' defaults except acks=all and idempotence
// (both already the defaults since Kafka 3.0, set here to say so): its
// default partitioner hashes the key with murmur2, the pipeline's rule.

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.uuid.Generators;
import com.networknt.schema.JsonSchema;
import com.networknt.schema.JsonSchemaFactory;
import com.networknt.schema.SchemaValidatorsConfig;
import com.networknt.schema.SpecVersion;
import com.networknt.schema.ValidationMessage;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeParseException;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Publish {
    static final int MAX_BYTES = 32768; // one encoded event, as the consumer counts it
    static final Duration MAX_FUTURE = Duration.ofMinutes(5);
    static final int ATTEMPTS = 5; // publish rounds; every round resends the same bytes, so the same id
    static final String CLIENT_ID = "usagemeter-example-java";

    /** The event breaks the contract; the message names the field and the rule. */
    static class Refused extends Exception {
        Refused(String msg) {
            super(msg);
        }
    }

    /**
     * The consumer's contract: the JSON Schema, plus the rules its description lists as
     * inexpressible in JSON Schema (size, duplicate names, UTF-8, future skew, years 1970-2105,
     * fractional digits of a JSON-number quantity, billing_period = the timestamp's UTC month).
     */
    static class EventValidator {
        // Strict JSON as the pipeline reads it: duplicate names and trailing
        // data refused, numbers exact (BigDecimal, never a double).
        final ObjectMapper mapper = JsonMapper.builder(JsonFactory.builder().build())
                .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
                .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
                .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
                .build();
        final JsonSchema schema;

        EventValidator(Path schemaPath) throws IOException {
            JsonSchemaFactory factory = JsonSchemaFactory.getInstance(SpecVersion.VersionFlag.V202012);
            SchemaValidatorsConfig config = SchemaValidatorsConfig.builder()
                    .formatAssertionsEnabled(true) // date-time is checked, not only annotated
                    .build();
            schema = factory.getSchema(mapper.readTree(Files.readString(schemaPath)), config);
        }

        /** Returns the event from the message bytes, or throws Refused. */
        ObjectNode validate(byte[] data, Instant now) throws Refused {
            if (data.length > MAX_BYTES) {
                throw new Refused("event: " + data.length + " bytes, more than " + MAX_BYTES);
            }
            String text;
            try {
                text = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(ByteBuffer.wrap(data)).toString();
            } catch (CharacterCodingException e) {
                throw new Refused("event: not UTF-8");
            }
            JsonNode node;
            try {
                node = mapper.readTree(text);
            } catch (JsonProcessingException e) {
                throw new Refused("event: not JSON (" + e.getOriginalMessage().split("\n")[0] + ")");
            }
            if (node == null || node.isMissingNode()) {
                throw new Refused("event: empty message");
            }
            wellFormed(node, "event");
            Set<ValidationMessage> errors = schema.validate(node);
            if (!errors.isEmpty()) {
                ValidationMessage e = errors.iterator().next();
                String why = e.getMessage(); // starts with the field: "/quantity: ...", ": ..." for the event
                throw new Refused(why.startsWith(":") ? "event" + why : why);
            }
            ObjectNode event = (ObjectNode) node;
            String ts = event.get("timestamp").textValue();
            OffsetDateTime t;
            try {
                t = OffsetDateTime.parse(ts);
            } catch (DateTimeParseException e) {
                throw new Refused("timestamp: " + ts + " is not RFC 3339");
            }
            if (t.toInstant().isAfter(now.plus(MAX_FUTURE))) {
                throw new Refused("timestamp: " + ts + " is more than 5 minutes in the future");
            }
            OffsetDateTime utc = t.withOffsetSameInstant(ZoneOffset.UTC);
            if (utc.getYear() < 1970 || utc.getYear() > 2105) {
                throw new Refused("timestamp: " + ts + " is outside 1970-2105 in UTC");
            }
            JsonNode q = event.get("quantity");
            if (q.isNumber() && q.decimalValue().stripTrailingZeros().scale() > 9) {
                throw new Refused("quantity: " + q + " has more than 9 fractional digits");
            }
            JsonNode period = event.get("billing_period");
            String month = String.format("%04d-%02d", utc.getYear(), utc.getMonthValue());
            if (period != null && !period.isNull() && !period.textValue().equals(month)) {
                throw new Refused("billing_period: " + period.textValue() + " is not the UTC month of timestamp (" + month + ")");
            }
            return event;
        }

        /** Jackson decodes an unpaired surrogate escape (\ud800) into a String; the pipeline refuses it. */
        static void wellFormed(JsonNode node, String path) throws Refused {
            if (node.isTextual() && !wellFormed(node.textValue())) {
                throw new Refused(path + ": unpaired surrogate escape");
            }
            Iterator<Map.Entry<String, JsonNode>> fields = node.fields();
            while (fields.hasNext()) {
                Map.Entry<String, JsonNode> f = fields.next();
                if (!wellFormed(f.getKey())) {
                    throw new Refused(path + ": unpaired surrogate escape in a member name");
                }
                wellFormed(f.getValue(), path.equals("event") ? f.getKey() : path);
            }
            for (JsonNode e : node.isArray() ? node : List.<JsonNode>of()) {
                wellFormed(e, path);
            }
        }

        static boolean wellFormed(String s) {
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
                    i++;
                } else if (Character.isSurrogate(c)) {
                    return false;
                }
            }
            return true;
        }
    }

    /** An event with a UUIDv7 id, fixed once: a retry must send the same id. */
    static ObjectNode newEvent(String tenant, String feature, String quantity) {
        ObjectNode e = JsonNodeFactory.instance.objectNode();
        e.put("id", Generators.timeBasedEpochGenerator().generate().toString());
        e.put("tenant_id", tenant);
        e.put("feature_type", feature);
        e.put("quantity", quantity); // an exact decimal string such as "1.5", never a double
        e.put("timestamp", Instant.now().truncatedTo(ChronoUnit.MILLIS).toString());
        return e;
    }

    static KafkaProducer<String, byte[]> newProducer() {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, System.getenv().getOrDefault("KAFKA_BROKERS", "127.0.0.1:19092"));
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, CLIENT_ID);
        return new KafkaProducer<>(p, new StringSerializer(), new ByteArraySerializer());
    }

    /**
     * Sends the records; the ones whose send failed are sent again, byte for byte (same id, so
     * counted once), up to ATTEMPTS rounds. Returns the ones that still failed.
     */
    /**
     * A record keyed by tenant_id. Kafka records do not carry the client id: the optional
     * usage.publisher header names the publisher in the consumer's re-route metrics.
     */
    static ProducerRecord<String, byte[]> record(String topic, String tenant, byte[] data) {
        ProducerRecord<String, byte[]> r = new ProducerRecord<>(topic, tenant, data);
        r.headers().add("usage.publisher", CLIENT_ID.getBytes(StandardCharsets.UTF_8));
        return r;
    }

    static List<ProducerRecord<String, byte[]>> publish(KafkaProducer<String, byte[]> producer,
            List<ProducerRecord<String, byte[]>> records) throws InterruptedException {
        List<ProducerRecord<String, byte[]>> pending = records;
        for (int attempt = 1; attempt <= ATTEMPTS && !pending.isEmpty(); attempt++) {
            List<Future<?>> futures = new ArrayList<>();
            for (ProducerRecord<String, byte[]> r : pending) {
                futures.add(producer.send(r));
            }
            producer.flush(); // every send of this round has its acks or its error
            List<ProducerRecord<String, byte[]>> failed = new ArrayList<>();
            for (int i = 0; i < futures.size(); i++) {
                try {
                    futures.get(i).get();
                } catch (java.util.concurrent.ExecutionException e) {
                    System.err.println("send failed (attempt " + attempt + "): " + e.getCause());
                    failed.add(pending.get(i));
                }
            }
            pending = failed;
            if (!pending.isEmpty()) {
                Thread.sleep(Math.min(1L << attempt, 10) * 100);
            }
        }
        return pending;
    }

    static List<String[]> readJsonl(Path path) throws IOException {
        ObjectMapper m = new ObjectMapper();
        List<String[]> out = new ArrayList<>();
        for (String line : Files.readAllLines(path)) {
            if (!line.isBlank()) {
                JsonNode r = m.readTree(line);
                out.add(new String[] {r.get("name").textValue(), r.get("b64").textValue()});
            }
        }
        return out;
    }

    static int check(EventValidator v, Path path) throws IOException {
        StringBuilder out = new StringBuilder();
        for (String[] rec : readJsonl(path)) {
            try {
                v.validate(Base64.getDecoder().decode(rec[1]), Instant.now());
                out.append(rec[0]).append("\tok\n");
            } catch (Refused e) {
                out.append(rec[0]).append("\trefused: ").append(e.getMessage().split("\n")[0]).append('\n');
            }
        }
        System.out.print(out);
        return 0;
    }

    static int send(EventValidator v, Path path, String topic) throws IOException, InterruptedException {
        List<ProducerRecord<String, byte[]>> records = new ArrayList<>();
        int refused = 0;
        for (String[] rec : readJsonl(path)) {
            byte[] data = Base64.getDecoder().decode(rec[1]);
            try {
                ObjectNode event = v.validate(data, Instant.now());
                records.add(record(topic, event.get("tenant_id").textValue(), data));
            } catch (Refused e) { // never sent: it would only reach the DLQ
                System.out.println(rec[0] + "\trefused: " + e.getMessage().split("\n")[0]);
                refused++;
            }
        }
        try (KafkaProducer<String, byte[]> producer = newProducer()) { // close() flushes
            List<ProducerRecord<String, byte[]>> failed = publish(producer, records);
            System.out.printf("{\"sent\":%d,\"refused\":%d,\"failed\":%d}%n", records.size() - failed.size(), refused, failed.size());
            return failed.isEmpty() ? 0 : 1;
        }
    }

    static int publishOne(EventValidator v, String tenant, String feature, String quantity, String topic)
            throws IOException, InterruptedException {
        ObjectNode event = newEvent(tenant, feature, quantity);
        byte[] data = v.mapper.writeValueAsBytes(event);
        try {
            v.validate(data, Instant.now());
        } catch (Refused e) {
            System.err.println("not published: " + e.getMessage());
            return 2;
        }
        try (KafkaProducer<String, byte[]> producer = newProducer()) {
            if (!publish(producer, List.of(record(topic, tenant, data))).isEmpty()) {
                System.err.println("not published after " + ATTEMPTS + " attempts: " + event.get("id").textValue());
                return 1;
            }
        }
        System.out.println("published " + event.get("id").textValue() + " to " + topic);
        return 0;
    }

    public static void main(String[] args) throws Exception {
        // kafka-clients logs its whole config at INFO: keep warnings and errors only.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        Path here = Path.of(System.getProperty("user.dir"));
        String schemaEnv = System.getenv("USAGE_SCHEMA");
        Path schema = schemaEnv != null ? Path.of(schemaEnv) : here.resolve("../../schemas/usage_event.schema.json");
        String topic = System.getenv().getOrDefault("USAGE_TOPIC", "usage.events");
        int code;
        if (args.length >= 1 && args[0].equals("check") && args.length <= 2) {
            code = check(new EventValidator(schema), args.length == 2 ? Path.of(args[1]) : here.resolve("../testdata/vectors.jsonl"));
        } else if (args.length == 2 && args[0].equals("send")) {
            code = send(new EventValidator(schema), Path.of(args[1]), topic);
        } else if (args.length == 3) {
            code = publishOne(new EventValidator(schema), args[0], args[1], args[2], topic);
        } else {
            System.err.println("usage: java -cp 'target/dependency/*' Publish.java TENANT FEATURE QUANTITY | check [VECTORS.jsonl] | send MESSAGES.jsonl");
            code = 2;
        }
        System.exit(code);
    }
}
