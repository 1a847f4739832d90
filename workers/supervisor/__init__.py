"""The group supervisor: one per pool, in `moeplane up` (`EmbeddedStack`) and `moeplane pool`
(`PoolRunner`) alike. See `supervisor.GroupSupervisor`."""
