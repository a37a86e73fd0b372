# Sourced by demo.sh and bench/: builds an OCI image from plain tar files and pushes it to a
# registry with nothing but curl and coreutils (no Docker, no skopeo), through the registry
# HTTP API: blob uploads (POST then PUT), then the manifest.

# push_blob REGISTRY_URL REPO FILE -> prints the blob's digest
push_blob() {
  local reg=$1 repo=$2 file=$3 digest location sep
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  if ! curl -fsS -o /dev/null -I "$reg/v2/$repo/blobs/$digest" 2>/dev/null; then
    location=$(curl -fsS -X POST -D - -o /dev/null "$reg/v2/$repo/blobs/uploads/" |
      tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
    case "$location" in http*) ;; *) location="$reg$location" ;; esac
    case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$file" \
      "$location${sep}digest=$digest" -o /dev/null
  fi
  echo "$digest"
}

# push_image REGISTRY_URL REPO TAG CONFIG_JSON LAYER.tar... : gzips each layer, then pushes
# the image as push_gz_image does.
push_image() {
  local reg=$1 repo=$2 tag=$3 runconfig=$4 work layer gzipped=()
  shift 4
  work=$(mktemp -d)
  for layer in "$@"; do
    gzip -c -1 "$layer" >"$work/$(basename "$layer").gz"
    gzipped+=("$work/$(basename "$layer").gz")
  done
  push_gz_image "$reg" "$repo" "$tag" "$runconfig" "${gzipped[@]}"
  rm -rf "$work"
}

# push_gz_image REGISTRY_URL REPO TAG CONFIG_JSON LAYER.tar.gz... : pushes the gzipped layers
# and an image config whose "config" member is CONFIG_JSON, then an OCI manifest.
push_gz_image() {
  local reg=$1 repo=$2 tag=$3 runconfig=$4
  shift 4
  local work diff_ids="" layers="" gz digest size config_digest config_size
  work=$(mktemp -d)
  for gz in "$@"; do
    digest=$(push_blob "$reg" "$repo" "$gz")
    size=$(stat -c %s "$gz")
    diff_ids+="${diff_ids:+,}\"sha256:$(gzip -dc "$gz" | sha256sum | cut -d' ' -f1)\""
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$digest\",\"size\":$size}"
  done
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$runconfig" "$diff_ids" >"$work/config.json"
  config_digest=$(push_blob "$reg" "$repo" "$work/config.json")
  config_size=$(stat -c %s "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$config_digest" "$config_size" "$layers" >"$work/manifest.json"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @"$work/manifest.json" "$reg/v2/$repo/manifests/$tag" -o /dev/null
  rm -rf "$work"
}

# start_registry DIR -> starts Debian's docker-registry on a free 127.0.0.1 port with its
# storage under DIR; sets REGISTRY_PID and REGISTRY_ADDR (host:port).
start_registry() {
  local dir=$1 port
  mkdir -p "$dir/storage"
  # A random high port nothing answers on (bash cannot bind to port 0 to ask the kernel).
  while :; do
    port=$(shuf -i 20000-60999 -n 1)
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
  done
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY_ADDR=127.0.0.1:$port
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the registry did not start; see $dir/registry.log" >&2
  return 1
}

# busybox_rootfs DIR: a minimal runnable tree (static busybox, its applets, passwd/group).
busybox_rootfs() {
  local dir=$1 applet
  mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/opt/eskapade"
  cp /bin/busybox "$dir/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nesdev:x:1000:1000:esdev:/home/esdev:/bin/sh\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nesdev:x:1000:\n' >"$dir/etc/group"
  chmod 1777 "$dir/tmp"
}
