// A dynamic provisioner for PersistentVolumeClaims on the real test node:
// each claim gets a hostPath directory under -root, on the node the scheduler
// selected (WaitForFirstConsumer). The directory is world-writable because
// trainer pods run as a non-root UID and hostPath volumes ignore fsGroup.
// Built on sig-storage-lib-external-provisioner, the library CSI-less
// provisioners (local-path, NFS subdir) are written with.
package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

type hostPathProvisioner struct {
	root string
}

func (p *hostPathProvisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	dir := filepath.Join(p.root, opts.PVName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	if err := os.Chmod(dir, 0o777); err != nil { // MkdirAll is subject to the umask
		return nil, controller.ProvisioningFinished, err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	directory := v1.HostPathDirectory
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: opts.PVC.Spec.Resources.Requests[v1.ResourceStorage]},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &directory},
			},
		},
	}
	if opts.SelectedNodeName != "" {
		pv.Spec.NodeAffinity = &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
			NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
				Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{opts.SelectedNodeName},
			}}}},
		}}
	}
	return pv, controller.ProvisioningFinished, nil
}

func (p *hostPathProvisioner) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil || !strings.HasPrefix(pv.Spec.HostPath.Path, p.root+string(os.PathSeparator)) {
		return &controller.IgnoredError{Reason: "not provisioned under " + p.root}
	}
	return os.RemoveAll(pv.Spec.HostPath.Path)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	name := flag.String("name", "helixrun.io/hostpath", "provisioner name StorageClasses refer to")
	root := flag.String("root", "", "directory that holds one subdirectory per volume")
	klog.InitFlags(nil)
	flag.Parse()
	if *root == "" {
		klog.Fatal(errors.New("-root is required"))
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	controller.NewProvisionController(ctx, client, *name, &hostPathProvisioner{root: filepath.Clean(*root)},
		controller.LeaderElection(false)).Run(ctx)
}
