# Sidechain backend: developer entry points.

# --- dev stack (docker compose) ---
# dev-stack:start
# dev-stack:end
