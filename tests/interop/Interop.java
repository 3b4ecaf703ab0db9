// Reads what cbx wrote with Apache Avro Java, and writes it again.
//
// Usage: java -cp <avro jars>:<classes> Interop DIR
//   DIR/schemas/<hex fingerprint>.avsc  every schema cbx publishes (plain and wire forms)
//   DIR/records/<name>.bin              single-object encoded records cbx wrote
// For each schema: Avro's CRC-64-AVRO fingerprint of its Parsing Canonical Form must equal the
// file name (little-endian hex, as in cbx.schemas). For each record: the schema named by its
// fingerprint decodes it (UUIDs, dates and timestamps as logical types), and encoding the decoded
// record again gives the same bytes. Prints one line per check and exits 1 on any failure.

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;

import org.apache.avro.Conversions;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public final class Interop {
  public static void main(String[] args) throws Exception {
    Path dir = Path.of(args[0]);
    GenericData model = new GenericData();
    model.addLogicalTypeConversion(new Conversions.UUIDConversion());
    model.addLogicalTypeConversion(new TimeConversions.DateConversion());
    model.addLogicalTypeConversion(new TimeConversions.TimestampMillisConversion());

    Map<String, Schema> byFingerprint = new HashMap<>();
    int failures = 0;
    for (Path p : sorted(dir.resolve("schemas"))) {
      String expected = p.getFileName().toString().replace(".avsc", "");
      Schema schema = new Schema.Parser().parse(Files.readString(p));
      long fp = SchemaNormalization.parsingFingerprint64(schema);
      String actual = hex(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array());
      byFingerprint.put(actual, schema);
      if (actual.equals(expected)) {
        System.out.println("FINGERPRINT OK " + schema.getFullName() + " " + actual);
      } else {
        failures++;
        System.out.println("FINGERPRINT FAIL " + schema.getFullName() + " cbx " + expected + " java " + actual);
      }
    }
    for (Path p : sorted(dir.resolve("records"))) {
      byte[] bytes = Files.readAllBytes(p);
      String fp = hex(Arrays.copyOfRange(bytes, 2, 10));
      Schema schema = byFingerprint.get(fp);
      String name = p.getFileName().toString();
      if (schema == null) {
        failures++;
        System.out.println("RECORD FAIL " + name + " unknown fingerprint " + fp);
        continue;
      }
      try {
        GenericRecord record = new BinaryMessageDecoder<GenericRecord>(model, schema).decode(bytes);
        byte[] again = new BinaryMessageEncoder<GenericRecord>(model, schema).encode(record).array();
        if (Arrays.equals(bytes, again)) {
          System.out.println("RECORD OK " + name + " " + schema.getFullName());
        } else {
          failures++;
          System.out.println("RECORD FAIL " + name + " re-encoded bytes differ");
        }
      } catch (Exception e) {
        failures++;
        System.out.println("RECORD FAIL " + name + " " + e);
      }
    }
    System.out.println(failures == 0 ? "ALL OK" : failures + " FAILED");
    System.exit(failures == 0 ? 0 : 1);
  }

  private static Iterable<Path> sorted(Path dir) throws Exception {
    TreeMap<String, Path> out = new TreeMap<>();
    try (DirectoryStream<Path> s = Files.newDirectoryStream(dir)) {
      for (Path p : s) {
        out.put(p.getFileName().toString(), p);
      }
    }
    return out.values();
  }

  private static String hex(byte[] b) {
    StringBuilder sb = new StringBuilder();
    for (byte x : b) {
      sb.append(String.format("%02x", x));
    }
    return sb.toString();
  }
}
