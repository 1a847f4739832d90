"""The embedded stack behind `moeplane up` and `moeplane demo`: everything on 127.0.0.1, no cluster."""
