package regnotify.peer;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;

/**
 * Creates topics for the side-by-side benchmark (the local broker does not create topics on
 * use): {@code CreateTopics BOOTSTRAP PARTITIONS TOPIC...}. Topics that already exist are an
 * error, so every run starts from empty topics.
 */
public final class CreateTopics {
  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    int partitions = Integer.parseInt(args[1]);
    List<NewTopic> topics = new ArrayList<>();
    for (int i = 2; i < args.length; i++) {
      topics.add(new NewTopic(args[i], partitions, (short) 1));
    }
    try (Admin admin = Admin.create(props)) {
      admin.createTopics(topics).all().get();
    }
  }
}
