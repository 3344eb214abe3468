"""Cloud-init for the instances Kahuna creates: NoCloud files rendered from templates kept as
package files, and the `cidata` ISO carrying them (upstream-tenant.md §5).

    files = render(CloudInitProfile(...))      # {"user-data", "meta-data", "network-config"}
    image = build_iso(files)                   # bytes for CreateIsoVolume / UpdateIsoVolume
    digest(files) != stored digest  ->  rebuild and UpdateIsoVolume
"""

from kahuna.cloudinit.iso import LABEL, build_iso, read_iso, volume_label
from kahuna.cloudinit.profile import APPLIANCES, LINUX, WINDOWS, CloudInitProfile, NetAdapter
from kahuna.cloudinit.render import (FILES, TemplateError, controller_url, default_template, device_name,
                                     digest, render, templates_from_config)
from kahuna.cloudinit.shacrypt import hash_password, sha512_crypt, verify_password

__all__ = ["APPLIANCES", "FILES", "LABEL", "LINUX", "WINDOWS", "CloudInitProfile", "NetAdapter",
           "TemplateError", "build_iso", "controller_url", "default_template", "device_name", "digest",
           "hash_password", "read_iso", "render", "sha512_crypt", "templates_from_config",
           "verify_password", "volume_label"]
