"""Drives the OpenStack test double with the real openstacksdk: what it can do there, the
double does as a cloud would. Prints one JSON object; any exception fails the check.

    python openstack_sdk_check.py CLOUD IMAGE_FILE     (OS_CLIENT_CONFIG_FILE names clouds.yaml)
"""
import base64
import json
import sys

import importlib.metadata

import openstack

cloud, image_file = sys.argv[1], sys.argv[2]
conn = openstack.connect(cloud=cloud)
out = {"sdk_version": importlib.metadata.version("openstacksdk")}

# Catalog, version discovery, microversion negotiation.
out["compute_microversion"] = conn.compute.get_endpoint_data().max_microversion and str(
    conn.compute.get_endpoint_data().max_microversion
)
out["flavors"] = sorted(f.name for f in conn.compute.flavors())
out["networks"] = sorted(n.name for n in conn.network.networks())
limits = conn.compute.get_limits()
out["max_instances"] = limits.absolute.instances

# Images: create with data (POST + PUT file), find, list, download, delete.
with open(image_file, "rb") as f:
    data = f.read()
img = conn.image.create_image(
    name="sdk-image",
    filename=image_file,
    disk_format="qcow2",
    container_format="bare",
    wait=True,
    timeout=60,
    meta={"ferrotron_test": "yes"},
)
out["image_status"] = conn.image.get_image(img.id).status
out["image_found"] = conn.image.find_image("sdk-image").id == img.id
out["image_listed"] = any(i.id == img.id for i in conn.image.images())
got = conn.image.download_image(img.id)
out["image_roundtrip"] = (got.content if hasattr(got, "content") else got) == data
out["cloud_layer_images"] = [i.name for i in conn.list_images() if i.id == img.id]

# Servers: create with user data, metadata and a network; wait; list; delete; wait gone.
flavor = conn.compute.find_flavor("m1.tiny")
net = conn.network.find_network("private")
server = conn.compute.create_server(
    name="sdk-server",
    image_id=img.id,
    flavor_id=flavor.id,
    networks=[{"uuid": net.id}],
    metadata={"ferrotron_run": "sdk", "purpose": "check"},
    user_data=base64.b64encode(b"#cloud-config\n{}\n").decode(),
)
server = conn.compute.wait_for_server(server, status="ACTIVE", wait=60, interval=0.2)
out["server_status"] = server.status
out["server_metadata"] = conn.compute.get_server(server.id).metadata
out["server_listed"] = [s.name for s in conn.compute.servers(details=True) if s.id == server.id]
out["server_addresses"] = list(server.addresses.keys())
out["cloud_layer_server"] = conn.get_server("sdk-server").name
out["paged"] = len(list(conn.compute.servers(details=True, limit=1, paginated=True)))
conn.compute.delete_server(server)
conn.compute.wait_for_delete(server, interval=0.2, wait=60)
out["server_gone"] = conn.compute.find_server(server.id) is None

# An ERROR answer surfaces as the SDK's error, with the double's message.
try:
    conn.compute.create_server(name="x", image_id="no-such-image", flavor_id=flavor.id)
    out["bad_image_error"] = None
except openstack.exceptions.HttpException as e:
    out["bad_image_error"] = [e.status_code, str(e)]

conn.image.delete_image(img, ignore_missing=False)
out["image_gone"] = conn.image.find_image("sdk-image") is None
print(json.dumps(out))
