// What Apache Avro for Java (the reference implementation) does with a schema change.
//
// Usage: java -cp 'lib/*' AvroResolve.java CASE_DIR...
// Each CASE_DIR holds old.avsc (the writer schema), new.avsc (the reader schema) and body.bin (an Avro
// binary body written with old.avsc). For each case this reads body.bin with old.avsc, writes the
// record again with Java's own writer and old.avsc, then reads those bytes with old.avsc as writer and
// new.avsc as reader (standard schema resolution), with Java's logical-type conversions on. It prints
// one JSON line: {"case", "compatibility" (SchemaCompatibility's verdict), "written" (the record as
// written), "read" (the record as the new reader sees it, or null), "error" (why it could not, or null)}.
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.nio.file.Files;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

public class AvroResolve {
  public static void main(String[] args) throws Exception {
    GenericData data = new GenericData();
    data.addLogicalTypeConversion(new TimeConversions.DateConversion());
    data.addLogicalTypeConversion(new TimeConversions.TimestampMillisConversion());
    data.addLogicalTypeConversion(new TimeConversions.TimestampMicrosConversion());
    for (String dir : args) {
      Schema old = new Schema.Parser().parse(new File(dir, "old.avsc"));
      Schema neu = new Schema.Parser().parse(new File(dir, "new.avsc"));
      byte[] body = Files.readAllBytes(new File(dir, "body.bin").toPath());
      Object written = new GenericDatumReader<Object>(old, old, data)
          .read(null, DecoderFactory.get().binaryDecoder(body, null));
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
      new GenericDatumWriter<Object>(old, data).write(written, encoder);
      encoder.flush();
      String verdict = SchemaCompatibility.checkReaderWriterCompatibility(neu, old).getType().toString();
      String read = "null";
      String error = "null";
      try {
        read = data.toString(new GenericDatumReader<Object>(old, neu, data)
            .read(null, DecoderFactory.get().binaryDecoder(out.toByteArray(), null)));
      } catch (Exception e) {
        error = quote(e.getClass().getSimpleName());
      }
      System.out.println("{\"case\": " + quote(new File(dir).getName()) + ", \"compatibility\": " + quote(verdict)
          + ", \"written\": " + data.toString(written) + ", \"read\": " + read + ", \"error\": " + error + "}");
    }
  }

  private static String quote(String text) {
    return "\"" + text.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
  }
}
