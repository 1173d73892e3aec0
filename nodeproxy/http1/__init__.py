"""HTTP/1.1 framing (h11 behind our codec interface) and hop-by-hop header rewriting."""
