package weir.bench;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;

/** A tiny client for the MiniCluster's REST API (checkpoint statistics and triggers). */
final class Rest {
    static final ObjectMapper JSON = new ObjectMapper();
    final String base;

    Rest(int port) {
        this.base = "http://127.0.0.1:" + port;
    }

    JsonNode get(String path) throws IOException {
        return call("GET", path, null);
    }

    JsonNode post(String path, String body) throws IOException {
        return call("POST", path, body);
    }

    private JsonNode call(String method, String path, String body) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(base + path).openConnection();
        c.setRequestMethod(method);
        c.setConnectTimeout(2000);
        c.setReadTimeout(10000);
        if (body != null) {
            c.setDoOutput(true);
            c.setRequestProperty("Content-Type", "application/json");
            try (OutputStream out = c.getOutputStream()) {
                out.write(body.getBytes(StandardCharsets.UTF_8));
            }
        }
        int code = c.getResponseCode();
        try (InputStream in = code < 400 ? c.getInputStream() : c.getErrorStream()) {
            String text = in == null ? "" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
            if (code >= 400) throw new IOException(method + " " + path + " -> " + code + ": " + text);
            return JSON.readTree(text);
        } finally {
            c.disconnect();
        }
    }
}
