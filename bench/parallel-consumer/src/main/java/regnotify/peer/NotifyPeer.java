package regnotify.peer;

import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.URLDecoder;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.PKCS8EncodedKeySpec;
import java.security.spec.X509EncodedKeySpec;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.temporal.ChronoUnit;
import java.util.Base64;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.HdrHistogram.Histogram;
import org.HdrHistogram.Recorder;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * regnotify's job written on Confluent Parallel Consumer, as its README shows it: a
 * ParallelStreamProcessor with KEY ordering and maxConcurrency equal to regnotify's max_in_flight,
 * pollAndProduce returning the outcome record (Parallel Consumer produces it and commits the input
 * offset once the record is acknowledged). Per event: decode the Avro single-object input, sign
 * the notifyRegistrationStatus request with SHA256withRSA, POST it to the Alipay+ simulator with
 * the JDK HttpClient, verify the answer's signature, classify it, encode the outcome in Avro.
 *
 * <p>Measures itself the way `regnotify measure` does: after --warmup outcomes, over --events
 * more: events/s, notify latency (the HTTP call alone), CPU seconds of the whole JVM per 1,000
 * events (/proc/self/stat), peak RSS (VmHWM); prints one JSON line and exits.
 */
public final class NotifyPeer {
  private static final String PATH = "/aps/api/v1/merchants/notifyRegistrationStatus";
  private static final DateTimeFormatter TIME = DateTimeFormatter.ISO_OFFSET_DATE_TIME;
  private static final Pattern STATUS = Pattern.compile("\"resultStatus\"\\s*:\\s*\"([^\"]*)\"");
  private static final Pattern CODE = Pattern.compile("\"resultCode\"\\s*:\\s*\"([^\"]*)\"");
  private static final Pattern MESSAGE = Pattern.compile("\"resultMessage\"\\s*:\\s*\"([^\"]*)\"");
  private static final int MAX_ATTEMPTS = 8;

  private final String clientId;
  private final String baseUrl;
  private final String inputTopic;
  private final String resultTopic;
  private final PrivateKey privateKey;
  private final PublicKey alipayKey;
  private final HttpClient http;
  private final BinaryMessageDecoder<GenericRecord> decoder;
  private final BinaryMessageEncoder<GenericRecord> encoder;
  private final Schema outcomeSchema;
  private final ThreadLocal<Signature> signer;
  private final ThreadLocal<Signature> verifier;

  private final long warmup;
  private final long events;
  private final AtomicLong finished = new AtomicLong();
  private final Recorder notifyLatency = new Recorder(3);
  private final CountDownLatch warm = new CountDownLatch(1);
  private final CountDownLatch done = new CountDownLatch(1);

  NotifyPeer(Args args) throws Exception {
    this.clientId = args.get("client-id");
    this.baseUrl = args.get("base-url");
    this.inputTopic = args.get("input-topic");
    this.resultTopic = args.get("result-topic");
    this.warmup = Long.parseLong(args.get("warmup"));
    this.events = Long.parseLong(args.get("events"));
    KeyFactory rsa = KeyFactory.getInstance("RSA");
    this.privateKey =
        rsa.generatePrivate(new PKCS8EncodedKeySpec(pem(Path.of(args.get("private-key")))));
    this.alipayKey =
        rsa.generatePublic(new X509EncodedKeySpec(pem(Path.of(args.get("alipayplus-public-key")))));
    this.signer = ThreadLocal.withInitial(() -> signature(s -> s.initSign(privateKey)));
    this.verifier = ThreadLocal.withInitial(() -> signature(s -> s.initVerify(alipayKey)));
    this.http =
        HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(2))
            .build();
    Path schemas = Path.of(args.get("schemas"));
    Schema input = new Schema.Parser().parse(schemas.resolve("MerchantRegistrationDecided.avsc").toFile());
    this.outcomeSchema =
        new Schema.Parser().parse(schemas.resolve("RegistrationNotifyOutcome.avsc").toFile());
    this.decoder = new BinaryMessageDecoder<>(GenericData.get(), input);
    this.encoder = new BinaryMessageEncoder<>(GenericData.get(), outcomeSchema);
  }

  public static void main(String[] argv) throws Exception {
    Args args = new Args(argv);
    NotifyPeer peer = new NotifyPeer(args);
    peer.run(args.get("bootstrap"), args.get("group"), Integer.parseInt(args.get("max-concurrency")));
  }

  void run(String bootstrap, String group, int maxConcurrency) throws Exception {
    Properties consumerProps = new Properties();
    consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    consumerProps.put(ConsumerConfig.GROUP_ID_CONFIG, group);
    consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false); // required by Parallel Consumer
    consumerProps.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    consumerProps.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    consumerProps.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    Properties producerProps = new Properties();
    producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
    producerProps.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);

    ParallelConsumerOptions<byte[], byte[]> options =
        ParallelConsumerOptions.<byte[], byte[]>builder()
            .ordering(ProcessingOrder.KEY)
            .maxConcurrency(maxConcurrency)
            .commitMode(CommitMode.PERIODIC_CONSUMER_ASYNCHRONOUS)
            .consumer(new KafkaConsumer<>(consumerProps))
            .producer(new KafkaProducer<>(producerProps))
            .build();
    ParallelStreamProcessor<byte[], byte[]> processor =
        ParallelStreamProcessor.createEosStreamProcessor(options);
    processor.subscribe(List.of(inputTopic));
    processor.pollAndProduce(context -> handle(context.getSingleConsumerRecord()), result -> finishedOne());

    warm.await();
    long startNanos = System.nanoTime();
    double cpuStart = cpuSeconds();
    notifyLatency.getIntervalHistogram(); // leaves the warm-up's calls out
    done.await();
    double seconds = (System.nanoTime() - startNanos) / 1e9;
    double cpu = cpuSeconds() - cpuStart;
    Histogram latency = notifyLatency.getIntervalHistogram();
    long rss = peakRssBytes();
    System.out.printf(
        Locale.ROOT,
        "{\"implementation\":\"Parallel Consumer 0.5.3.3 on Java %s\",\"warmup_events\":%d,"
            + "\"events\":%d,\"seconds\":%.3f,\"events_per_second\":%.1f,\"notify_p50_ms\":%.3f,"
            + "\"notify_p99_ms\":%.3f,\"cpu_seconds_per_1000_events\":%.4f,\"peak_rss_bytes\":%d}%n",
        System.getProperty("java.version"),
        warmup,
        events,
        seconds,
        events / seconds,
        latency.getValueAtPercentile(50) / 1000.0,
        latency.getValueAtPercentile(99) / 1000.0,
        cpu * 1000.0 / events,
        rss);
    System.out.flush();
    processor.closeDrainFirst();
    System.exit(0);
  }

  private void finishedOne() {
    long n = finished.incrementAndGet();
    if (n == warmup) {
      warm.countDown();
    }
    if (n == warmup + events) {
      done.countDown();
    }
  }

  /** One event: its outcome record. Retries unknown answers with the same parameters. */
  private ProducerRecord<byte[], byte[]> handle(ConsumerRecord<byte[], byte[]> record) {
    GenericRecord event;
    try {
      event = decoder.decode(record.value());
    } catch (IOException | RuntimeException e) {
      throw new IllegalStateException("undecodable input at offset " + record.offset(), e);
    }
    String merchant = event.get("referenceMerchantId").toString();
    String request = event.get("registrationRequestId").toString();
    String decision = event.get("decision").toString();
    Object reason = event.get("rejectionReason");
    String body =
        "{\"referenceMerchantId\":" + json(merchant) + ",\"registrationRequestId\":" + json(request)
            + ",\"registrationResult\":{\"registrationStatus\":" + json(decision)
            + ("REJECTED".equals(decision) && reason != null
                ? ",\"rejectionReason\":" + json(reason.toString())
                : "")
            + "}}";
    byte[] bodyBytes = body.getBytes(StandardCharsets.UTF_8);
    String requestTime = OffsetDateTime.now(ZoneOffset.UTC).truncatedTo(ChronoUnit.SECONDS).format(TIME);
    String signatureHeader =
        "algorithm=RSA256,keyVersion=1,signature="
            + URLEncoder.encode(
                Base64.getEncoder().encodeToString(sign(content(clientId, requestTime, bodyBytes))),
                StandardCharsets.UTF_8);
    HttpRequest httpRequest =
        HttpRequest.newBuilder(URI.create(baseUrl + PATH))
            .timeout(Duration.ofSeconds(10))
            .header("Content-Type", "application/json; charset=UTF-8")
            .header("Client-Id", clientId)
            .header("Request-Time", requestTime)
            .header("Signature", signatureHeader)
            .POST(HttpRequest.BodyPublishers.ofByteArray(bodyBytes))
            .build();
    long firstAttemptAt = System.currentTimeMillis();
    String status = null, code = null, message = null, outcome = "DEAD_LETTERED";
    Integer httpStatus = null;
    int attempts = 0;
    long backoffMillis = 200;
    while (attempts < MAX_ATTEMPTS) {
      attempts++;
      HttpResponse<byte[]> response;
      long started = System.nanoTime();
      try {
        response = http.send(httpRequest, HttpResponse.BodyHandlers.ofByteArray());
      } catch (IOException e) {
        backoffMillis = pause(backoffMillis);
        continue;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException("interrupted", e);
      } finally {
        notifyLatency.recordValue((System.nanoTime() - started) / 1000);
      }
      httpStatus = response.statusCode();
      String answer = new String(response.body(), StandardCharsets.UTF_8);
      status = find(STATUS, answer);
      code = find(CODE, answer);
      message = find(MESSAGE, answer);
      boolean verified = verify(response);
      if ("S".equals(status) && verified) {
        outcome = "NOTIFIED";
        break;
      }
      if ("F".equals(status)) {
        outcome = "REJECTED";
        break;
      }
      backoffMillis = pause(backoffMillis); // U, unsigned success, 5xx: the same call again
    }
    GenericRecord result = new GenericData.Record(outcomeSchema);
    result.put("eventId", event.get("eventId").toString());
    result.put("referenceMerchantId", merchant);
    result.put("registrationRequestId", request);
    result.put("decision", new GenericData.EnumSymbol(outcomeSchema.getField("decision").schema(), decision));
    result.put("outcome", new GenericData.EnumSymbol(outcomeSchema.getField("outcome").schema(), outcome));
    result.put("resultStatus", status);
    result.put("resultCode", code);
    result.put("resultMessage", message);
    result.put("httpStatus", httpStatus);
    result.put("attempts", attempts);
    result.put("firstAttemptAt", firstAttemptAt);
    result.put("completedAt", System.currentTimeMillis());
    result.put("sourceTopic", record.topic());
    result.put("sourcePartition", record.partition());
    result.put("sourceOffset", record.offset());
    result.put("error", "DEAD_LETTERED".equals(outcome) ? "retries exhausted" : null);
    try {
      ByteBuffer encoded = encoder.encode(result);
      byte[] value = new byte[encoded.remaining()];
      encoded.get(value);
      return new ProducerRecord<>(resultTopic, record.key(), value);
    } catch (IOException e) {
      throw new IllegalStateException("cannot encode the outcome", e);
    }
  }

  private static long pause(long millis) {
    try {
      Thread.sleep((long) (Math.random() * millis));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    return Math.min(millis * 2, 30_000);
  }

  private static byte[] content(String clientId, String time, byte[] body) {
    ByteArrayOutputStream out = new ByteArrayOutputStream(body.length + 128);
    out.writeBytes(("POST " + PATH + "\n" + clientId + "." + time + ".").getBytes(StandardCharsets.UTF_8));
    out.writeBytes(body);
    return out.toByteArray();
  }

  private byte[] sign(byte[] content) {
    try {
      Signature s = signer.get();
      s.update(content);
      return s.sign();
    } catch (Exception e) {
      throw new IllegalStateException("cannot sign", e);
    }
  }

  /** The answer's Signature over POST path, Client-Id, Response-Time and body, by Alipay+'s key. */
  private boolean verify(HttpResponse<byte[]> response) {
    String header = response.headers().firstValue("Signature").orElse(null);
    String time = response.headers().firstValue("Response-Time").orElse(null);
    String client = response.headers().firstValue("Client-Id").orElse(clientId);
    if (header == null || time == null) {
      return false;
    }
    String encoded = null;
    for (String part : header.split(",")) {
      String[] pair = part.trim().split("=", 2);
      if (pair.length == 2 && pair[0].trim().equalsIgnoreCase("signature")) {
        encoded = pair[1].trim();
      }
    }
    if (encoded == null) {
      return false;
    }
    try {
      byte[] raw = Base64.getDecoder().decode(URLDecoder.decode(encoded, StandardCharsets.UTF_8));
      Signature v = verifier.get();
      v.update(content(client, time, response.body()));
      return v.verify(raw);
    } catch (Exception e) {
      return false;
    }
  }

  private static String find(Pattern pattern, String text) {
    Matcher m = pattern.matcher(text);
    return m.find() ? m.group(1) : null;
  }

  private static String json(String s) {
    StringBuilder out = new StringBuilder(s.length() + 2).append('"');
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        default -> {
          if (c < 0x20) {
            out.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    return out.append('"').toString();
  }

  private interface Init {
    void apply(Signature s) throws Exception;
  }

  private static Signature signature(Init init) {
    try {
      Signature s = Signature.getInstance("SHA256withRSA");
      init.apply(s);
      return s;
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  private static byte[] pem(Path path) throws IOException {
    String text = Files.readString(path);
    if (text.contains("BEGIN RSA PRIVATE KEY")) {
      throw new IllegalArgumentException(path + " is PKCS#1; give a PKCS#8 key");
    }
    String base64 = text.replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
    return Base64.getDecoder().decode(base64);
  }

  /** User plus system CPU seconds of the whole JVM (/proc/self/stat, in USER_HZ = 100). */
  private static double cpuSeconds() throws IOException {
    String stat = Files.readString(Path.of("/proc/self/stat"));
    String[] fields = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
    return (Long.parseLong(fields[11]) + Long.parseLong(fields[12])) / 100.0;
  }

  private static long peakRssBytes() throws IOException {
    for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
      if (line.startsWith("VmHWM:")) {
        return Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
      }
    }
    return -1;
  }

  /** --name value pairs. */
  static final class Args {
    private final java.util.Map<String, String> values = new java.util.HashMap<>();

    Args(String[] argv) {
      for (int i = 0; i + 1 < argv.length; i += 2) {
        values.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
      }
    }

    String get(String name) {
      String value = values.get(name);
      if (value == null) {
        throw new IllegalArgumentException("missing --" + name);
      }
      return value;
    }
  }
}
