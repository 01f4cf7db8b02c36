"""LangGraph state graphs: the ARPO loop (state, context, nodes, routing, builder) and how runs are invoked."""
