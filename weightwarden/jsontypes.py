"""JSON as it comes off the wire or out of a tool: one recursive type for data that is JSON by nature."""

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject = dict[str, JsonValue]
